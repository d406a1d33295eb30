# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled encoder: `Featurizer.encode`'s arithmetic after tokenising, in C.

Vocabulary lookup (the store's crc32 hash table), pooling, finetune token ids and hashed rows,
and the lexical channel's n-gram ids and TF-IDF weights, with the Python encoder's numbers bit
for bit: sums run in the order NumPy's reductions run them (row after row, in float32), the
lexicon's weights in float64 with the same libm calls, its n-gram hashes are CPython's own hash
of the UTF-8 bytes, and a text of more than 64 n-grams gets its weights from the very NumPy
function the Python encoder uses. Tokenising stays in Python (`tlserve.core.preprocessing`).
Built with ``-ffp-contract=off``, so no compiler fuses a multiply and an add into one rounding.
"""

import numpy as np

from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy
from libc.math cimport log, sqrt

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object text, Py_ssize_t* size) except NULL
    ctypedef Py_ssize_t Py_hash_t

cdef extern from *:
    """
    #if PY_VERSION_HEX >= 0x030E0000
    #define tl_hash_bytes(p, n) Py_HashBuffer((p), (n))
    #else
    #define tl_hash_bytes(p, n) _Py_HashBytes((p), (n))
    #endif
    """
    Py_hash_t tl_hash_bytes(const void* data, Py_ssize_t size)

# Token ids of the finetune graph (tlserve.core.features).
cdef int64_t BASE_ID = 1
cdef int64_t ZERO_ID = 2
cdef int64_t FIRST_TRAINED_ID = 3
cdef float NO_BASE = -1e9
# Up to this many n-grams, a text's weights are computed here; beyond, by the lexicon's NumPy function.
cdef Py_ssize_t PYTHON_ARITHMETIC_MAX = 64

cdef uint32_t CRC_TABLE[256]


cdef void _fill_crc_table() noexcept:
    cdef uint32_t c
    cdef int i, k
    for i in range(256):
        c = <uint32_t>i
        for k in range(8):
            c = (c >> 1) ^ 0xEDB88320u if c & 1 else c >> 1
        CRC_TABLE[i] = c


_fill_crc_table()


cdef inline uint32_t _crc_update(uint32_t state, const char* data, Py_ssize_t size) noexcept nogil:
    """zlib's crc32 (IEEE), on the inverted state: start from 0xFFFFFFFF, invert at the end."""
    cdef Py_ssize_t i
    for i in range(size):
        state = CRC_TABLE[(state ^ <uint8_t>data[i]) & 0xFF] ^ (state >> 8)
    return state


cdef inline Py_ssize_t _position(const int32_t[::1] values, int64_t value) noexcept nogil:
    """Position of `value` in sorted `values`, -1 if absent."""
    cdef Py_ssize_t low = 0, high = values.shape[0], middle
    while low < high:
        middle = (low + high) >> 1
        if values[middle] < value:
            low = middle + 1
        else:
            high = middle
    if low < values.shape[0] and values[low] == value:
        return low
    return -1


cdef float _pairwise(const float* a, Py_ssize_t n, Py_ssize_t stride) noexcept nogil:
    """NumPy's pairwise summation of n floats `stride` apart (its float32 add reduction, run in the order
    NumPy runs it: eight accumulators per block of up to 128, halves beyond)."""
    cdef float r[8]
    cdef float res
    cdef Py_ssize_t i, j, half
    if n < 8:
        res = -0.0
        for i in range(n):
            res = res + a[i * stride]
        return res
    if n <= 128:
        for j in range(8):
            r[j] = a[j * stride]
        i = 8
        while i < n - (n % 8):
            for j in range(8):
                r[j] = r[j] + a[(i + j) * stride]
            i += 8
        res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]))
        while i < n:
            res = res + a[i * stride]
            i += 1
        return res
    half = n // 2
    half -= half % 8
    return _pairwise(a, half, stride) + _pairwise(a + half * stride, n - half, stride)


cdef void _sum_max(const float* vectors, Py_ssize_t count, Py_ssize_t dim, float* total, float* maximum
                   ) noexcept nogil:
    """Column sums of `count` rows of `dim` floats as ``np.add.reduceat`` gives them (the first row, then
    the pairwise sum of the rest), and, unless `maximum` is NULL, their column maxima."""
    cdef Py_ssize_t i, j
    cdef float x
    for j in range(dim):
        total[j] = vectors[j] + _pairwise(vectors + dim + j, count - 1, dim)
    if maximum != NULL:
        for j in range(dim):
            maximum[j] = vectors[j]
        for i in range(1, count):
            for j in range(dim):
                x = vectors[i * dim + j]
                if x > maximum[j]:
                    maximum[j] = x


cdef class _Buffer:
    """A growable C array of int64 (codes, ids, counts) owned by one `encode` call."""
    cdef int64_t* data
    cdef Py_ssize_t size, capacity

    def __cinit__(self, Py_ssize_t capacity):
        self.capacity = max(capacity, 16)
        self.size = 0
        self.data = <int64_t*>malloc(self.capacity * sizeof(int64_t))
        if self.data == NULL:
            raise MemoryError()

    def __dealloc__(self):
        free(self.data)

    cdef int push(self, int64_t value) except -1:
        cdef int64_t* grown
        if self.size == self.capacity:
            grown = <int64_t*>realloc(self.data, 2 * self.capacity * sizeof(int64_t))
            if grown == NULL:
                raise MemoryError()
            self.data = grown
            self.capacity *= 2
        self.data[self.size] = value
        self.size += 1
        return 0


cdef class NativeEncoder:
    """One model's encoder: the arrays of its featurizer, read in place (never copied)."""

    cdef readonly bint frozen, mean_max, static, bigrams, lexical, joiner_space
    cdef Py_ssize_t buckets, dim, n_words, width, max_probes
    cdef uint32_t mask
    cdef const uint8_t[:, ::1] words
    cdef const int32_t[::1] rows, slots, store_rows, trained_buckets
    cdef const float[:, ::1] matrix
    cdef const float[::1] sif
    cdef bint has_sif
    cdef const int64_t[::1] gram_hashes
    cdef const int32_t[::1] gram_ids
    cdef const float[::1] idf
    cdef object search, many_weights
    cdef bytearray scratch

    def __init__(self, *, bint frozen, bint mean_max, bint static, Py_ssize_t buckets, bint bigrams,
                 words, rows, slots, int max_probes, search, matrix, sif=None, store_rows=None,
                 trained_buckets=None, gram_hashes=None, gram_ids=None, idf=None, str joiner=" ",
                 many_weights=None):
        self.frozen, self.mean_max, self.static = frozen, mean_max, static
        self.buckets, self.bigrams = buckets, bigrams
        self.n_words = len(words)
        self.width = words.dtype.itemsize
        self.words = words.view(np.uint8).reshape(self.n_words, self.width) if self.n_words \
            else np.zeros((0, 1), dtype=np.uint8)
        self.rows = rows
        self.slots = slots
        self.mask = <uint32_t>(len(slots) - 1)
        self.max_probes = max_probes
        self.search = search
        self.matrix = matrix
        self.dim = matrix.shape[1]
        self.has_sif = sif is not None
        self.sif = sif if sif is not None else np.zeros(0, dtype=np.float32)
        empty = np.zeros(0, dtype=np.int32)
        self.store_rows = store_rows if store_rows is not None else empty
        self.trained_buckets = trained_buckets if trained_buckets is not None else empty
        self.lexical = gram_hashes is not None
        self.gram_hashes = gram_hashes if gram_hashes is not None else np.zeros(0, dtype=np.int64)
        self.gram_ids = gram_ids if gram_ids is not None else empty
        self.idf = idf if idf is not None else np.zeros(0, dtype=np.float32)
        self.joiner_space = joiner == " "
        self.many_weights = many_weights
        self.scratch = bytearray(256)

    # --- vocabulary -------------------------------------------------------------------------------------------

    cdef int32_t _row(self, const char* key, Py_ssize_t size) except -2:
        """The store row of a token's UTF-8 bytes, -1 if unknown (`VocabularyIndex._probe`)."""
        cdef uint32_t slot
        cdef int32_t position
        cdef Py_ssize_t probe
        if self.n_words == 0:
            return -1
        slot = (_crc_update(0xFFFFFFFFu, key, size) ^ 0xFFFFFFFFu) & self.mask
        for probe in range(self.max_probes):
            position = self.slots[slot]
            if position < 0:
                return -1
            if (position < self.n_words and size <= self.width and memcmp(&self.words[position, 0], key, size) == 0
                    and (size == self.width or self.words[position, size] == 0)):
                return self.rows[position]
            slot = (slot + 1) & self.mask
        # A damaged table must not hang the server: the index's binary search, as in Python.
        return <int32_t>int(self.search([key[:size]])[0])

    # --- one call ---------------------------------------------------------------------------------------------

    def encode(self, list tokens, list units):
        """Graph inputs (dict, in the Python encoder's order), token counts and unknown-token counts per text;
        `units` are the lexical channel's units (the tokens, or characters)."""
        cdef Py_ssize_t n = len(tokens), total = 0, t, k, size
        cdef list text_tokens
        cdef const char* key
        for text_tokens in tokens:
            total += len(text_tokens)
        rows_array = np.empty(total, dtype=np.int32)
        counts_array = np.empty(n, dtype=np.int32)
        oov_array = np.zeros(n, dtype=np.int32)
        cdef int32_t[::1] rows = rows_array
        cdef int32_t[::1] counts = counts_array
        cdef int32_t[::1] oov = oov_array
        k = 0
        for t in range(n):
            text_tokens = tokens[t]
            counts[t] = len(text_tokens)
            for token in text_tokens:
                key = PyUnicode_AsUTF8AndSize(token, &size)
                rows[k] = self._row(key, size)
                if rows[k] < 0:
                    oov[t] += 1
                k += 1
        inputs = {}
        if self.frozen:
            inputs["features"] = self._pool(rows, counts)
        else:
            inputs.update(self._finetune(tokens, rows, counts))
            if self.static:
                inputs["features"] = self._pool(rows, counts)
        if self.lexical:
            inputs["lexicon_ids"], inputs["lexicon_weights"] = self._lexicon(units)
        return inputs, counts_array, oov_array

    # --- pooling ----------------------------------------------------------------------------------------------

    def _pool(self, const int32_t[::1] rows, const int32_t[::1] counts):
        """Mean (and max) of each text's known rows, SIF-weighted where the model has weights."""
        cdef Py_ssize_t n = counts.shape[0], dim = self.dim, t, i, j, k = 0, known, longest = 1
        cdef bint mean_max = self.mean_max, has_sif = self.has_sif
        out_array = np.zeros((n, 2 * dim if mean_max else dim), dtype=np.float32)
        cdef float[:, ::1] out = out_array
        cdef float weight
        cdef int32_t row
        for t in range(n):
            longest = max(longest, counts[t])
        cdef float* vectors = <float*>malloc(longest * dim * sizeof(float))
        if vectors == NULL:
            raise MemoryError()
        with nogil:
            for t in range(n):
                known = 0  # the text's known rows, gathered (and weighted) as NumPy's take does
                for i in range(counts[t]):
                    row = rows[k + i]
                    if row >= 0:
                        if has_sif:
                            weight = self.sif[row]
                            for j in range(dim):
                                vectors[known * dim + j] = self.matrix[row, j] * weight
                        else:
                            memcpy(&vectors[known * dim], &self.matrix[row, 0], dim * sizeof(float))
                        known += 1
                k += counts[t]
                if known:
                    _sum_max(vectors, known, dim, &out[t, 0], &out[t, dim] if mean_max else NULL)
                    for j in range(dim):
                        out[t, j] = out[t, j] / <float>known
        free(vectors)
        return out_array

    # --- finetune ---------------------------------------------------------------------------------------------

    cdef uint32_t _bucket_of(self, str word) except? 0xFFFFFFFF:
        cdef Py_ssize_t size
        cdef const char* key = PyUnicode_AsUTF8AndSize(word, &size)
        return (_crc_update(0xFFFFFFFFu, key, size) ^ 0xFFFFFFFFu) % <uint32_t>self.buckets

    cdef uint32_t _bigram_bucket(self, str first, str second) except? 0xFFFFFFFF:
        cdef Py_ssize_t a, b
        cdef const char* left = PyUnicode_AsUTF8AndSize(first, &a)
        cdef const char* right = PyUnicode_AsUTF8AndSize(second, &b)
        cdef uint32_t state = _crc_update(0xFFFFFFFFu, left, a)
        state = _crc_update(state, b"\x1f", 1)
        state = _crc_update(state, right, b)
        return (state ^ 0xFFFFFFFFu) % <uint32_t>self.buckets

    def _finetune(self, list tokens, const int32_t[::1] rows, const int32_t[::1] counts):
        """Token ids (store words, unknown words, bigrams) and the sum (and max) of untrained store words."""
        cdef Py_ssize_t n = len(tokens), t, i, k = 0, found, first_bucket_id, width = 1, position, before
        cdef Py_ssize_t dim = self.dim, base_known, longest = 1
        cdef int32_t row
        cdef list text_tokens
        cdef _Buffer codes = _Buffer(rows.shape[0] * 2)
        cdef _Buffer lengths = _Buffer(n)
        cdef bint mean_max = self.mean_max
        first_bucket_id = FIRST_TRAINED_ID + self.store_rows.shape[0]
        total_array = np.zeros((n, dim), dtype=np.float32)
        cdef float[:, ::1] total = total_array
        maximum_array = np.full((n, dim), NO_BASE, dtype=np.float32) if mean_max else None
        cdef float[:, ::1] maximum = maximum_array if mean_max else total_array
        for t in range(n):
            longest = max(longest, counts[t])
        cdef float* vectors = <float*>malloc(longest * dim * sizeof(float))
        if vectors == NULL:
            raise MemoryError()
        try:
            for t in range(n):
                text_tokens = tokens[t]
                before = codes.size
                base_known = 0
                for i in range(counts[t]):
                    row = rows[k + i]
                    found = _position(self.store_rows, row) if row >= 0 else -1
                    if found >= 0:
                        codes.push(FIRST_TRAINED_ID + found)
                    elif row >= 0:
                        codes.push(BASE_ID)
                        memcpy(&vectors[base_known * dim], &self.matrix[row, 0], dim * sizeof(float))
                        base_known += 1
                if base_known:
                    _sum_max(vectors, base_known, dim, &total[t, 0], &maximum[t, 0] if mean_max else NULL)
                if self.buckets:
                    for i in range(counts[t]):
                        if rows[k + i] < 0:
                            # An untrained unknown word reads the zero row.
                            found = _position(self.trained_buckets, self._bucket_of(text_tokens[i]))
                            codes.push(first_bucket_id + found if found >= 0 else ZERO_ID)
                    if self.bigrams:
                        for i in range(1, counts[t]):
                            # An untrained bigram is left out.
                            found = _position(self.trained_buckets,
                                              self._bigram_bucket(text_tokens[i - 1], text_tokens[i]))
                            if found >= 0:
                                codes.push(first_bucket_id + found)
                k += counts[t]
                lengths.push(codes.size - before)
                width = max(width, codes.size - before)
        finally:
            free(vectors)
        ids_array = np.zeros((n, width), dtype=np.int64)
        cdef int64_t[:, ::1] ids = ids_array
        position = 0
        for t in range(n):
            for i in range(lengths.data[t]):
                ids[t, i] = codes.data[position + i]
            position += lengths.data[t]
        inputs = {"token_ids": ids_array, "base_sum": total_array}
        if mean_max:
            inputs["base_max"] = maximum_array
        return inputs

    # --- the lexical channel ----------------------------------------------------------------------------------

    cdef int64_t _gram_id(self, const char* data, Py_ssize_t size) noexcept:
        """The id of an n-gram's UTF-8 bytes (0: not in the lexicon): CPython's hash, found by binary search."""
        cdef int64_t key = tl_hash_bytes(data, size)
        cdef Py_ssize_t low = 0, high = self.gram_hashes.shape[0], middle
        while low < high:
            middle = (low + high) >> 1
            if self.gram_hashes[middle] < key:
                low = middle + 1
            else:
                high = middle
        if low < self.gram_hashes.shape[0] and self.gram_hashes[low] == key:
            return self.gram_ids[low]
        return 0

    cdef bytes _utf8(self, str unit):
        return unit.encode("utf-8", "surrogatepass")

    def _lexicon(self, list units):
        """Ids int64 [n, L] and TF-IDF weights float32 [n, L] of each text's known n-grams (`Lexicon.encode`)."""
        cdef Py_ssize_t n = len(units), t, i, j, m, size, a, b, width = 1, position, count, slot
        cdef list text_units
        cdef list encoded
        cdef const char* left
        cdef const char* right
        cdef int64_t gram
        cdef _Buffer ids = _Buffer(64)
        cdef _Buffer tfs = _Buffer(64)
        cdef _Buffer lengths = _Buffer(n)
        cdef _Buffer table = _Buffer(16)
        cdef unsigned char* scratch
        for t in range(n):
            text_units = units[t]
            m = len(text_units)
            encoded = [self._utf8(unit) for unit in text_units]
            # Each text's distinct ids in first-seen order, with their counts: an open-addressing table of
            # positions into this text's part of `ids`.
            size = 16
            while size < 4 * m:
                size <<= 1
            while table.capacity < size:
                table.push(0)
            for i in range(size):
                table.data[i] = -1
            position = ids.size
            for i in range(2 * m - 1 if m else 0):
                if i < m:
                    gram = self._gram_id(<bytes>encoded[i], len(<bytes>encoded[i]))
                else:
                    j = i - m
                    a, b = len(<bytes>encoded[j]), len(<bytes>encoded[j + 1])
                    left, right = <bytes>encoded[j], <bytes>encoded[j + 1]
                    if a + b + 1 > len(self.scratch):
                        self.scratch = bytearray(2 * (a + b + 1))
                    scratch = self.scratch
                    memcpy(scratch, left, a)
                    if self.joiner_space:
                        scratch[a] = 32
                        memcpy(scratch + a + 1, right, b)
                        gram = self._gram_id(<char*>scratch, a + b + 1)
                    else:
                        memcpy(scratch + a, right, b)
                        gram = self._gram_id(<char*>scratch, a + b)
                if gram == 0:
                    continue
                slot = gram & (size - 1)
                while table.data[slot] >= 0 and ids.data[table.data[slot]] != gram:
                    slot = (slot + 1) & (size - 1)
                if table.data[slot] >= 0:
                    tfs.data[table.data[slot]] += 1
                else:
                    table.data[slot] = ids.size
                    ids.push(gram)
                    tfs.push(1)
            count = ids.size - position
            lengths.push(count)
            width = max(width, count)
        ids_array = np.zeros((n, width), dtype=np.int64)
        weights_array = np.zeros((n, width), dtype=np.float32)
        cdef int64_t[:, ::1] out_ids = ids_array
        cdef float[:, ::1] out_weights = weights_array
        cdef double norm, w
        cdef double* text_weights = <double*>malloc(max(width, 1) * sizeof(double))
        if text_weights == NULL:
            raise MemoryError()
        try:
            position = 0
            for t in range(n):
                count = lengths.data[t]
                for i in range(count):
                    out_ids[t, i] = ids.data[position + i]
                if count > PYTHON_ARITHMETIC_MAX:
                    idf = np.array([self.idf[ids.data[position + i] - 1] for i in range(count)], dtype=np.float64)
                    tf = np.array([tfs.data[position + i] for i in range(count)], dtype=np.float64)
                    weights_array[t, :count] = self.many_weights(tf, idf)
                elif count:
                    norm = 0.0
                    for i in range(count):
                        w = (1.0 + log(<double>tfs.data[position + i])) * <double>self.idf[ids.data[position + i] - 1]
                        text_weights[i] = w
                        norm += w * w
                    norm = sqrt(norm)
                    for i in range(count):
                        out_weights[t, i] = <float>(text_weights[i] / norm)
                position += count
        finally:
            free(text_weights)
        return ids_array, weights_array
