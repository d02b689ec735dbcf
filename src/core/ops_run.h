/* ops_run.h: running one op of the op table (ops.h) on a backend. Internal header: the graph
 * executor and the tests call this; the public API exposes only the Gated DeltaNet op. */
#ifndef GDN_OPS_RUN_H
#define GDN_OPS_RUN_H

#include "ops.h"

#ifdef __cplusplus
extern "C" {
#endif

/* Validate `call` with gdn_op_check (F32/BF16 destinations only), then run it on `backend`:
 * GATED_DELTA_NET through the backend's gated_delta_net entry, every other kind through its
 * run_op. A backend without run_op, or without this kind, gives GDN_ERROR_UNSUPPORTED naming
 * the op and the backend. On a validation failure nothing has been written. Tensors must live
 * in memory the backend addresses; on CUDA the op is queued on the backend's stream. */
gdn_status gdn_op_run(gdn_backend *backend, const gdn_op_call *call);

#ifdef __cplusplus
}
#endif
#endif
