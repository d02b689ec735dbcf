/* gdn_reference.c: the float64 reference of the Gated DeltaNet op. Plain loops in the order of
 * the math in include/gdn.h; every backend is tested against it. Slow on purpose: clarity only. */
#include "../core/gdn_op.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

/* Element (i0, i1, i2, i3, i4) of a strided F32 or F64 view. */
static char *at(const gdn_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3, int64_t i4)
{
    return (char *)t->data + i0 * t->nb[0] + i1 * t->nb[1] + i2 * t->nb[2] + i3 * t->nb[3] + i4 * t->nb[4];
}

static double load_f32(const gdn_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3)
{
    return (double)*(const float *)at(t, i0, i1, i2, i3, 0);
}

/* x <- x / sqrt(|x|^2 + 1e-6), the l2norm of fla and Hugging Face. */
static void l2_normalise(double *x, int64_t n)
{
    double sum = 0.0;
    for (int64_t i = 0; i < n; i++)
        sum += x[i] * x[i];
    double denominator = sqrt(sum + 1e-6);
    for (int64_t i = 0; i < n; i++)
        x[i] /= denominator;
}

gdn_status gdn_gated_delta_net_reference(const gdn_gated_delta_net_params *params,
                                         const gdn_gated_delta_net_args *args)
{
    gdn_clear_error();
    gdn_gdn_shape shape;
    gdn_status st = gdn_gated_delta_net_check(params, args, GDN_DTYPE_F64, &shape);
    if (st != GDN_OK)
        return st;
    /* The pool slot each sequence starts from: every index and the in-place rule are checked
     * before anything is written (each (b, h) reads its whole state before writing). */
    if ((st = gdn_gated_delta_net_check_index(args, &shape, NULL)) != GDN_OK)
        return st;
    const int64_t D = shape.D;
    double *S = malloc(sizeof(double) * (size_t)(D * D + 2 * D)); /* S[j][i], then q, k */
    if (S == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "gated_delta_net reference: no memory");
    double *q = S + D * D, *k = q + D;

    for (int64_t b = 0; b < shape.B; b++)
        for (int64_t h = 0; h < shape.Hv; h++) {
            const int64_t hk = gdn_qk_head(params->broadcast, h, shape.Hk, shape.Hv);
            const int64_t slot = shape.indexed ? *(const int32_t *)at(&args->state_index, b, 0, 0, 0, 0) : b;
            for (int64_t j = 0; j < D; j++)
                for (int64_t i = 0; i < D; i++)
                    S[j * D + i] = load_f32(&args->state, i, j, h, slot);

            for (int64_t t = 0; t < shape.T; t++) {
                for (int64_t i = 0; i < D; i++) {
                    q[i] = load_f32(&args->q, i, hk, t, b);
                    k[i] = load_f32(&args->k, i, hk, t, b);
                }
                if (params->l2norm) {
                    l2_normalise(q, D);
                    l2_normalise(k, D);
                }
                const double decay = exp(load_f32(&args->g, h, t, b, 0));
                const double beta = load_f32(&args->beta, h, t, b, 0);
                for (int64_t j = 0; j < D; j++) {
                    double *row = S + j * D; /* value column j of the math's S: a Dk vector */
                    double sk = 0.0;
                    for (int64_t i = 0; i < D; i++) {
                        row[i] *= decay;
                        sk += row[i] * k[i];
                    }
                    const double d = beta * (load_f32(&args->v, j, h, t, b) - sk);
                    double sq = 0.0;
                    for (int64_t i = 0; i < D; i++) {
                        row[i] += d * k[i];
                        sq += row[i] * q[i];
                    }
                    *(double *)at(&args->o, j, h, t, b, 0) = (double)shape.scale * sq;
                }
                const int64_t s = shape.T - 1 - t; /* snapshot index, newest first */
                if (s < shape.n_write)
                    for (int64_t j = 0; j < D; j++)
                        for (int64_t i = 0; i < D; i++)
                            *(double *)at(&args->states, i, j, h, b, s) = S[j * D + i];
            }
        }
    free(S);
    return GDN_OK;
}
