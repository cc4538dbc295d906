/* The transaction walk of pipeline.chain.decode._walk_transactions, in C.
 *
 * Same contract as the Python reference: walk `count` serialized transactions from `pos` and
 * report where they end and how many witness bytes (marker and flag included) they carry. With a
 * coinbase index (pw_scan_spends) it also looks up every input's previous txid in it and reports
 * the inputs that spend a stored coinbase, with the byte ranges the caller needs to compute the
 * spending transaction's txid (hashing is left to the caller, and only for those transactions).
 * It only reports success or failure; on failure the caller re-runs the Python walk, which names
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

/* ------------------------------------------------------------------ coinbase txid index
 *
 * Open addressing over 32-byte txids (internal byte order, as outpoints hold them). `keys` holds
 * the txids in insertion order (32 bytes each); `slots` has mask + 1 entries (a power of two, kept
 * at least twice the number of keys by the caller), each -1 (empty) or an index into `keys`. A
 * txid is a hash: its first 8 bytes are uniformly spread and serve as the slot hash unchanged.
 *
 * The slots are followed by a one-bit-per-entry filter of 8 x (mask + 1) bits ((mask + 1) / 4
 * uint32 words, all 0 on an empty table), set at bit (bytes 8..15 of the txid) for every key. Nearly
 * every input looked up spends no coinbase; the filter (2 MB for mainnet's ~925,000 coinbases,
 * about 6% false positives) answers most of them from cache, where the slots and keys (~40 MB) would
 * cost two memory misses each.
 */
static uint64_t slot_of(const uint8_t *txid, uint64_t mask)
{
    uint64_t h;
    memcpy(&h, txid, 8);
    return h & mask;
}

static uint32_t *filter_of(const int32_t *slots, uint64_t mask)
{
    return (uint32_t *)(slots + mask + 1);
}

static uint64_t filter_bit(const uint8_t *txid, uint64_t mask)
{
    uint64_t h;
    memcpy(&h, txid + 8, 8);
    return h & (8 * (mask + 1) - 1);
}

/* Index of `txid` in keys, or -1. */
int64_t pw_index_find(const uint8_t *keys, const int32_t *slots, uint64_t mask, const uint8_t *txid)
{
    uint64_t bit = filter_bit(txid, mask);
    if (!(filter_of(slots, mask)[bit >> 5] & (1u << (bit & 31)))) return -1;
    for (uint64_t s = slot_of(txid, mask);; s = (s + 1) & mask) {
        int32_t k = slots[s];
        if (k < 0) return -1;
        if (memcmp(keys + (uint64_t)k * 32, txid, 32) == 0) return k;
    }
}

/* Put keys[index] (not in the table yet) into its slot. */
static void place(const uint8_t *keys, int32_t *slots, uint64_t mask, int32_t index)
{
    const uint8_t *txid = keys + (uint64_t)index * 32;
    uint64_t s = slot_of(txid, mask), bit = filter_bit(txid, mask);
    while (slots[s] >= 0) s = (s + 1) & mask;
    slots[s] = index;
    filter_of(slots, mask)[bit >> 5] |= 1u << (bit & 31);
}

/* Rebuild the slots (all -1 on entry, the filter all 0) for keys[0 .. n). */
void pw_index_rebuild(const uint8_t *keys, uint64_t n, int32_t *slots, uint64_t mask)
{
    for (uint64_t i = 0; i < n; i++) place(keys, slots, mask, (int32_t)i);
}

/* Add m (txid, height) pairs to an index of n keys whose arrays have room for n + m. A txid
 * already present keeps the larger height (BIP30: a duplicate coinbase txid overwrote the earlier
 * output; spends after it refer to the later block). Returns the new number of keys. */
uint64_t pw_index_add(uint8_t *keys, int32_t *heights, uint64_t n, int32_t *slots, uint64_t mask,
                      const uint8_t *txids, const int32_t *new_heights, uint64_t m)
{
    for (uint64_t i = 0; i < m; i++) {
        const uint8_t *txid = txids + i * 32;
        int64_t k = pw_index_find(keys, slots, mask, txid);
        if (k >= 0) {
            if (new_heights[i] > heights[k]) heights[k] = new_heights[i];
            continue;
        }
        memcpy(keys + n * 32, txid, 32);
        heights[n] = new_heights[i];
        place(keys, slots, mask, (int32_t)n);
        n++;
    }
    return n;
}

/* ------------------------------------------------------------------ the walk */

/* One record per input that spends an indexed coinbase, MATCH_FIELDS uint64 each:
 * transaction index (from 0 at `pos`), input index, vout, offset of the outpoint's txid,
 * transaction start, start of its non-witness body (after marker and flag), end of that body
 * (where the witness starts, or the locktime), transaction end. */
#define MATCH_FIELDS 8

static int walk(const uint8_t *raw, uint64_t end, uint64_t pos, uint64_t count,
                const uint8_t *keys, const int32_t *slots, uint64_t mask,
                uint64_t *matches, uint64_t max_matches, uint64_t *out_matches,
                uint64_t *out_end, uint64_t *out_witness, uint64_t *out_inputs)
{
    uint64_t witness = 0, inputs = 0, found = 0, n_in, n_out, n_items, len;
    if (pos > end) return -1;
    for (uint64_t t = 0; t < count; t++) {
        uint64_t tx_start = pos, first_match = found;
        if (!skip(end, &pos, 4) || pos >= end) return -1;
        int segwit = raw[pos] == 0;
        if (segwit) {
            if (end - pos < 2 || raw[pos + 1] != 1) return -1;
            pos += 2;
        }
        uint64_t body_start = pos;
        if (!read_varint(raw, end, &pos, &n_in)) return -1;
        if (n_in > (end - pos) / 41) return -1;          /* outpoint 36 + length 1 + sequence 4 */
        inputs += n_in;
        for (uint64_t i = 0; i < n_in; i++) {
            uint64_t outpoint = pos;
            if (!skip(end, &pos, 36)) return -1;
            if (keys != NULL && pw_index_find(keys, slots, mask, raw + outpoint) >= 0) {
                if (found < max_matches) {
                    uint64_t *m = matches + found * MATCH_FIELDS;
                    const uint8_t *v = raw + outpoint + 32;
                    m[0] = t;
                    m[1] = i;
                    m[2] = (uint64_t)v[0] | (uint64_t)v[1] << 8 | (uint64_t)v[2] << 16 | (uint64_t)v[3] << 24;
                    m[3] = outpoint;
                    m[4] = tx_start;
                    m[5] = body_start;
                }
                found++;
            }
            if (!read_varint(raw, end, &pos, &len) || !skip(end, &pos, len) || !skip(end, &pos, 4)) return -1;
        }
        if (!read_varint(raw, end, &pos, &n_out)) return -1;
        if (n_out > (end - pos) / 9) return -1;          /* value 8 + length 1 */
        for (uint64_t i = 0; i < n_out; i++) {
            if (!skip(end, &pos, 8) || !read_varint(raw, end, &pos, &len) || !skip(end, &pos, len)) return -1;
        }
        uint64_t body_end = pos;
        if (segwit) {
            for (uint64_t i = 0; i < n_in; i++) {
                if (!read_varint(raw, end, &pos, &n_items)) return -1;
                if (n_items > end - pos) return -1;
                for (uint64_t k = 0; k < n_items; k++) {
                    if (!read_varint(raw, end, &pos, &len) || !skip(end, &pos, len)) return -1;
                }
            }
            witness += pos - body_end + 2;
        }
        if (!skip(end, &pos, 4)) return -1;
        for (uint64_t j = first_match; j < found && j < max_matches; j++) {
            matches[j * MATCH_FIELDS + 6] = body_end;
            matches[j * MATCH_FIELDS + 7] = pos;
        }
    }
    *out_end = pos;
    *out_witness = witness;
    if (out_inputs != NULL) *out_inputs = inputs;
    if (out_matches != NULL) *out_matches = found;
    return 0;
}

/* Returns 0 and sets *out_end / *out_witness on success, -1 on malformed or truncated data. */
int pw_scan_transactions(const uint8_t *raw, uint64_t end, uint64_t pos, uint64_t count,
                         uint64_t *out_end, uint64_t *out_witness)
{
    return walk(raw, end, pos, count, NULL, NULL, 0, NULL, 0, NULL, out_end, out_witness, NULL);
}

/* The walk plus the coinbase lookup: as pw_scan_transactions, and *out_inputs (inputs walked),
 * *out_matches (inputs that spend an indexed coinbase; records for the first max_matches of them
 * are written to `matches`: call again with room for all when *out_matches > max_matches). */
int pw_scan_spends(const uint8_t *raw, uint64_t end, uint64_t pos, uint64_t count,
                   const uint8_t *keys, const int32_t *slots, uint64_t mask,
                   uint64_t *matches, uint64_t max_matches, uint64_t *out_matches,
                   uint64_t *out_end, uint64_t *out_witness, uint64_t *out_inputs)
{
    return walk(raw, end, pos, count, keys, slots, mask, matches, max_matches, out_matches,
                out_end, out_witness, out_inputs);
}
