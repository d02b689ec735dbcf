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

/* An element of an F32 or BF16 state (BF16: the upper half of the float with those bits). */
static double load_state(const gdn_tensor *t, int64_t i0, int64_t i1, int64_t i2, int64_t i3)
{
    if (t->dtype == GDN_DTYPE_F32)
        return load_f32(t, i0, i1, i2, i3);
    uint16_t half;
    memcpy(&half, at(t, i0, i1, i2, i3, 0), sizeof half);
    const uint32_t bits = (uint32_t)half << 16;
    float x;
    memcpy(&x, &bits, sizeof x);
    return (double)x;
}

/* x rounded to the nearest BF16 value, ties to even: 8 significant bits, the exponent range of
 * F32 (below 2^-126 the spacing stays 2^-133, as for F32 subnormals). Straight from the double,
 * so this is the correctly rounded value the F32 kernels approximate. */
static double round_bf16(double x)
{
    if (x == 0.0 || !isfinite(x))
        return x;
    int e;
    (void)frexp(x, &e); /* |x| in [2^(e-1), 2^e) */
    const int quantum = e - 8 > -133 ? e - 8 : -133;
    return ldexp(nearbyint(ldexp(x, -quantum)), quantum); /* nearbyint: ties to even */
}

/* With BF16 storage, the state after a token rounded (every element of the head). */
static void round_state(double *S, int64_t D, gdn_dtype storage)
{
    if (storage != GDN_DTYPE_BF16)
        return;
    for (int64_t i = 0; i < D * D; i++)
        S[i] = round_bf16(S[i]);
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

/* One token of the update on one head's state S [Dv][Dk] (k already normalised when asked):
 *     S <- exp(g) S;  d <- beta (v - S k);  S <- S + d k^T;  o <- scale S q  (when q is not NULL)
 * v [D], o [D]. The same function serves new tokens and replayed (folded) ones. */
static void reference_token(double *S, int64_t D, const double *q, const double *k, const double *v, double g,
                            double beta, double scale, double *o, double *delta)
{
    const double decay = exp(g);
    for (int64_t j = 0; j < D; j++) {
        double *row = S + j * D; /* value column j of the math's S: a Dk vector */
        double sk = 0.0;
        for (int64_t i = 0; i < D; i++) {
            row[i] *= decay;
            sk += row[i] * k[i];
        }
        const double d = beta * (v[j] - sk);
        if (delta != NULL)
            delta[j] = d;
        double sq = 0.0;
        for (int64_t i = 0; i < D; i++) {
            row[i] += d * k[i];
            sq += q != NULL ? row[i] * q[i] : 0.0;
        }
        if (o != NULL)
            o[j] = scale * sq;
    }
}

/* A folded ring token: S <- decay S + k delta^T (row j += delta[j] k). */
static void reference_fold(double *S, int64_t D, const double *k, const double *delta, double decay)
{
    for (int64_t j = 0; j < D; j++)
        for (int64_t i = 0; i < D; i++)
            S[j * D + i] = S[j * D + i] * decay + delta[j] * k[i];
}

/* Token (i1 = head, i2 = token, i3 = sequence or slot) of a [., ., H, D] F32 view into x[0..D),
 * L2-normalised when asked. */
static void load_vector(double *x, const gdn_tensor *t, int64_t D, int64_t head, int64_t token, int64_t outer,
                        int normalise)
{
    for (int64_t i = 0; i < D; i++)
        x[i] = load_f32(t, i, head, token, outer);
    if (normalise)
        l2_normalise(x, D);
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
    double *S = malloc(sizeof(double) * (size_t)(D * D + 4 * D)); /* S[j][i], then q, k, v, o */
    if (S == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "gated_delta_net reference: no memory");
    double *q = S + D * D, *k = q + D, *v = k + D, *o = v + D;

    for (int64_t b = 0; b < shape.B; b++)
        for (int64_t h = 0; h < shape.Hv; h++) {
            const int64_t hk = gdn_qk_head(params->broadcast, h, shape.Hk, shape.Hv);
            const int64_t slot = shape.indexed ? *(const int32_t *)at(&args->state_index, b, 0, 0, 0, 0) : b;
            const int64_t to = shape.write_indexed ? *(const int32_t *)at(&args->states_index, b, 0, 0, 0, 0) : b;
            for (int64_t j = 0; j < D; j++)
                for (int64_t i = 0; i < D; i++)
                    S[j * D + i] = load_state(&args->state, i, j, h, slot);

            for (int64_t t = 0; t < shape.T; t++) {
                load_vector(q, &args->q, D, hk, t, b, params->l2norm);
                load_vector(k, &args->k, D, hk, t, b, params->l2norm);
                load_vector(v, &args->v, D, h, t, b, 0);
                reference_token(S, D, q, k, v, load_f32(&args->g, h, t, b, 0), load_f32(&args->beta, h, t, b, 0),
                                (double)shape.scale, o, NULL);
                round_state(S, D, shape.storage);
                for (int64_t j = 0; j < D; j++)
                    *(double *)at(&args->o, j, h, t, b, 0) = o[j];
                const int64_t s = shape.T - 1 - t; /* snapshot index, newest first */
                if (s < shape.n_write)
                    for (int64_t j = 0; j < D; j++)
                        for (int64_t i = 0; i < D; i++)
                            *(double *)at(&args->states, i, j, h, to, s) = S[j * D + i];
            }
        }
    free(S);
    return GDN_OK;
}

/* The replay form, in the order of include/gdn.h: per sequence and head, fold the ring tokens,
 * commit, run the new tokens (their deltas kept); then append the new tokens to the rings (after
 * every read, so the order of sequences does not matter; a delta goes in as the nearest float). */
gdn_status gdn_gated_delta_net_replay_reference(const gdn_gated_delta_net_params *params,
                                                const gdn_gated_delta_net_replay_args *args, gdn_dtype storage)
{
    gdn_clear_error();
    gdn_gdn_shape shape;
    gdn_gated_delta_net_args plain;
    gdn_status st = gdn_gated_delta_net_replay_check(params, args, GDN_DTYPE_F64, &shape, &plain);
    if (st != GDN_OK || (st = gdn_gated_delta_net_check_index(&plain, &shape, NULL)) != GDN_OK)
        return st;
    const int64_t D = shape.D, L = shape.L;
    /* S[j][i], then q, k, v, o, then the new tokens' deltas [B][T][Hv][D] */
    const size_t n_deltas = (size_t)(shape.B * shape.T * shape.Hv * D);
    double *S = malloc(sizeof(double) * ((size_t)(D * D + 4 * D) + n_deltas));
    if (S == NULL)
        return gdn_fail(GDN_ERROR_OUT_OF_MEMORY, "gated_delta_net_replay reference: no memory");
    double *q = S + D * D, *k = q + D, *v = k + D, *o = v + D, *deltas = o + D;

    for (int64_t b = 0; b < shape.B; b++) {
        const int64_t slot = *(const int32_t *)at(&args->state_index, b, 0, 0, 0, 0);
        const gdn_gdn_fold fold = gdn_gated_delta_net_fold_of(args, b);
        for (int64_t h = 0; h < shape.Hv; h++) {
            const int64_t hk = gdn_qk_head(params->broadcast, h, shape.Hk, shape.Hv);
            for (int64_t j = 0; j < D; j++)
                for (int64_t i = 0; i < D; i++)
                    S[j * D + i] = *(const double *)at(&args->state, i, j, h, slot, 0);
            for (int64_t n = 0; n < fold.count; n++) {
                const int64_t pos = (fold.start + n) % L;
                load_vector(k, &args->ring_k, D, hk, pos, slot, 0); /* k^, normalised when appended */
                load_vector(v, &args->ring_v, D, h, pos, slot, 0); /* the token's delta */
                reference_fold(S, D, k, v, load_f32(&args->ring_g, h, pos, slot, 0));
                round_state(S, D, storage);
            }
            if (fold.commit != 0)
                for (int64_t j = 0; j < D; j++)
                    for (int64_t i = 0; i < D; i++)
                        *(double *)at(&args->state, i, j, h, slot, 0) = S[j * D + i];
            for (int64_t t = 0; t < shape.T; t++) {
                load_vector(q, &args->q, D, hk, t, b, params->l2norm);
                load_vector(k, &args->k, D, hk, t, b, params->l2norm);
                load_vector(v, &args->v, D, h, t, b, 0);
                double *delta = deltas + ((b * shape.T + t) * shape.Hv + h) * D;
                reference_token(S, D, q, k, v, load_f32(&args->g, h, t, b, 0), load_f32(&args->beta, h, t, b, 0),
                                (double)shape.scale, o, delta);
                round_state(S, D, storage);
                for (int64_t j = 0; j < D; j++)
                    *(double *)at(&args->o, j, h, t, b, 0) = o[j];
            }
        }
    }
    /* The rings: token t's k^ (normalised as the update applied it), its delta and its decay exp(g)
     * at position (start + count + t) mod L, each the nearest float. */
    for (int64_t b = 0; b < shape.B; b++) {
        const int64_t slot = *(const int32_t *)at(&args->state_index, b, 0, 0, 0, 0);
        const gdn_gdn_fold fold = gdn_gated_delta_net_fold_of(args, b);
        for (int64_t t = 0; t < shape.T; t++) {
            const int64_t pos = (fold.start + fold.count + t) % L;
            for (int64_t hk = 0; hk < shape.Hk; hk++) {
                load_vector(k, &args->k, D, hk, t, b, params->l2norm);
                for (int64_t i = 0; i < D; i++) {
                    const float x = (float)k[i];
                    memcpy(at(&args->ring_k, i, hk, pos, slot, 0), &x, sizeof x);
                }
            }
            for (int64_t i = 0; i < D; i++) {
                for (int64_t h = 0; h < shape.Hv; h++) {
                    const float d = (float)deltas[((b * shape.T + t) * shape.Hv + h) * D + i];
                    memcpy(at(&args->ring_v, i, h, pos, slot, 0), &d, sizeof d);
                }
            }
            for (int64_t h = 0; h < shape.Hv; h++) {
                const float decay = (float)exp(load_f32(&args->g, h, t, b, 0));
                memcpy(at(&args->ring_g, h, pos, slot, 0, 0), &decay, sizeof decay);
            }
        }
    }
    free(S);
    return GDN_OK;
}
