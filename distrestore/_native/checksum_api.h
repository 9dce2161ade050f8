/* The C interface of distrestore._native._checksum, for the other extension modules.
 *
 * One CRC32C implementation serves the package: _checksum owns the kernels and hands other
 * modules a function pointer through a capsule (the CPython way to share C code between
 * extension modules), so the mapped read folds the checksum into its copy with the very kernel
 * that `crc32c()` uses, and `use_kernel()` switches both.
 *
 *     const distrestore_checksum_api *api = PyCapsule_Import(DISTRESTORE_CHECKSUM_CAPSULE, 0);
 *     uint32_t reg = ~api->copy_crc(0xFFFFFFFFu, src, dst, n);   // CRC32C of src[0:n), copied to dst
 */
#ifndef DISTRESTORE_CHECKSUM_API_H
#define DISTRESTORE_CHECKSUM_API_H

#include <stddef.h>
#include <stdint.h>

#define DISTRESTORE_CHECKSUM_CAPSULE "distrestore._native._checksum._C_API"

typedef struct {
    /* The CRC register after src[0:n), starting from `reg` (no pre/post inversion); when dst is
     * not NULL the bytes are also copied there, in the same pass. Touches no Python state,
     * takes no lock and allocates nothing: safe without the GIL and inside a SIGBUS guard. */
    uint32_t (*copy_crc)(uint32_t reg, const uint8_t *src, uint8_t *dst, size_t n);
} distrestore_checksum_api;

#endif
