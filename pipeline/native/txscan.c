/* The transaction walk of pipeline.decode._scan_transactions, in C.
 *
 * Same contract as the Python reference: walk `count` serialized transactions from `pos` and
 * report where they end and how many witness bytes (marker and flag included) they carry. It
 * only reports success or failure; on failure the caller re-runs the Python walk, which names
 * the problem and the offset, so both paths give the same error text.
 *
 * Plain C with no Python API: loaded with ctypes, which releases the GIL during the call, so a
 * fetching thread runs while a block is walked.
 */
#include <stdint.h>
#include <string.h>

/* CompactSize at *pos; 0 on a short read. */
static int read_varint(const uint8_t *raw, uint64_t end, uint64_t *pos, uint64_t *value)
{
    uint64_t p = *pos;
    if (p >= end) return 0;
    uint8_t b = raw[p];
    if (b < 0xFD) { *value = b; *pos = p + 1; return 1; }
    unsigned width = b == 0xFD ? 2 : (b == 0xFE ? 4 : 8);
    if (end - p - 1 < width) return 0;
    uint64_t v = 0;
    for (unsigned i = 0; i < width; i++) v |= (uint64_t)raw[p + 1 + i] << (8 * i);
    *value = v;
    *pos = p + 1 + width;
    return 1;
}

/* Advance *pos by n bytes if they exist. */
static int skip(uint64_t end, uint64_t *pos, uint64_t n)
{
    if (n > end - *pos) return 0;
    *pos += n;
    return 1;
}

/* Returns 0 and sets *out_end / *out_witness on success, -1 on malformed or truncated data. */
int pw_scan_transactions(const uint8_t *raw, uint64_t end, uint64_t pos, uint64_t count,
                         uint64_t *out_end, uint64_t *out_witness)
{
    uint64_t witness = 0, n_in, n_out, n_items, len;
    if (pos > end) return -1;
    for (uint64_t t = 0; t < count; t++) {
        if (!skip(end, &pos, 4) || pos >= end) return -1;
        int segwit = raw[pos] == 0;
        if (segwit) {
            if (end - pos < 2 || raw[pos + 1] != 1) return -1;
            pos += 2;
        }
        if (!read_varint(raw, end, &pos, &n_in)) return -1;
        if (n_in > (end - pos) / 41) return -1;          /* outpoint 36 + length 1 + sequence 4 */
        for (uint64_t i = 0; i < n_in; i++) {
            if (!skip(end, &pos, 36) || !read_varint(raw, end, &pos, &len) || !skip(end, &pos, len)
                || !skip(end, &pos, 4)) return -1;
        }
        if (!read_varint(raw, end, &pos, &n_out)) return -1;
        if (n_out > (end - pos) / 9) return -1;          /* value 8 + length 1 */
        for (uint64_t i = 0; i < n_out; i++) {
            if (!skip(end, &pos, 8) || !read_varint(raw, end, &pos, &len) || !skip(end, &pos, len)) return -1;
        }
        if (segwit) {
            uint64_t wit_start = pos;
            for (uint64_t i = 0; i < n_in; i++) {
                if (!read_varint(raw, end, &pos, &n_items)) return -1;
                if (n_items > end - pos) return -1;
                for (uint64_t k = 0; k < n_items; k++) {
                    if (!read_varint(raw, end, &pos, &len) || !skip(end, &pos, len)) return -1;
                }
            }
            witness += pos - wit_start + 2;
        }
        if (!skip(end, &pos, 4)) return -1;
    }
    *out_end = pos;
    *out_witness = witness;
    return 0;
}
