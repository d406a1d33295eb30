# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The compiled encoder: `Featurizer.encode`'s arithmetic after tokenising, in C.

Vocabulary lookup (the store's crc32 hash table), pooling, finetune token ids and hashed rows,
and the lexical channel's n-gram ids and TF-IDF weights, with the Python encoder's numbers bit
for bit: sums run in the order NumPy's reductions run them (row after row, in float32), the
lexicon's weights in float64 with the same libm calls, its n-gram hashes are CPython's own hash
of the UTF-8 bytes, and a block of more than 64 word n-grams (1,024 character n-grams) gets its
weights from the very NumPy function the Python encoder uses. Tokenising stays in Python (`tlserve.core.preprocessing`).
Built with ``-ffp-contract=off``, so no compiler fuses a multiply and an add into one rounding.
"""

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int32_t, int64_t, uint8_t, uint32_t, uint64_t
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


cnp.import_array()

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


cdef inline Py_ssize_t _position(const int32_t* values, Py_ssize_t size, int64_t value) noexcept nogil:
    """Position of `value` in the `size` sorted `values`, -1 if absent."""
    cdef Py_ssize_t low = 0, high = size, middle
    while low < high:
        middle = (low + high) >> 1
        if values[middle] < value:
            low = middle + 1
        else:
            high = middle
    if low < size and values[low] == value:
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


cdef struct Vec:
    # A growable C array of int64 owned by one `encode` call (freed in its `finally`).
    int64_t* data
    Py_ssize_t size
    Py_ssize_t capacity


cdef int _push(Vec* vec, int64_t value) except -1:
    cdef int64_t* grown
    cdef Py_ssize_t capacity
    if vec.size == vec.capacity:
        capacity = max(16, 2 * vec.capacity)
        grown = <int64_t*>realloc(vec.data, capacity * sizeof(int64_t))
        if grown == NULL:
            raise MemoryError()
        vec.data, vec.capacity = grown, capacity
    vec.data[vec.size] = value
    vec.size += 1
    return 0


cdef int _reserve(Vec* vec, Py_ssize_t capacity) except -1:
    cdef int64_t* grown
    if vec.capacity < capacity:
        grown = <int64_t*>realloc(vec.data, capacity * sizeof(int64_t))
        if grown == NULL:
            raise MemoryError()
        vec.data, vec.capacity = grown, capacity
    return 0


cdef int _grow(char** buffer, Py_ssize_t* capacity, Py_ssize_t needed) except -1:
    """A scratch buffer of at least `needed` bytes (its old contents dropped)."""
    if needed > capacity[0]:
        free(buffer[0])
        capacity[0] = 2 * needed
        buffer[0] = <char*>malloc(capacity[0])
        if buffer[0] == NULL:
            capacity[0] = 0
            raise MemoryError()
    return 0


cdef inline cnp.ndarray _zeros2(Py_ssize_t rows, Py_ssize_t columns, int kind):
    cdef cnp.npy_intp shape[2]
    shape[0], shape[1] = rows, columns
    return cnp.PyArray_ZEROS(2, shape, kind, 0)


cdef inline cnp.ndarray _zeros1(Py_ssize_t size, int kind):
    cdef cnp.npy_intp shape[1]
    shape[0] = size
    return cnp.PyArray_ZEROS(1, shape, kind, 0)


cdef class NativeEncoder:
    """One model's encoder: the arrays of its featurizer, read in place (never copied)."""

    cdef readonly bint frozen, mean_max, static, bigrams, lexical, joiner_space
    cdef Py_ssize_t buckets, dim, n_words, width, max_probes, n_store_rows, n_trained_buckets, n_grams
    cdef uint32_t mask
    cdef bint has_sif
    # The arrays, held so that the pointers below stay valid.
    cdef object arrays
    cdef const uint8_t* words
    cdef const int32_t* rows
    cdef const int32_t* slots
    cdef const int32_t* store_rows
    cdef const int32_t* trained_buckets
    cdef const float* matrix
    cdef const float* sif
    cdef const int64_t* gram_hashes
    cdef const int32_t* gram_ids
    # Where the hashes of each top-bits prefix start in `gram_hashes` (2^gram_bits + 1 entries): a lookup reads
    # a cache line or two of neighbouring hashes, not the ~17 scattered ones of a binary search over 100,000
    # n-grams; it costs half a byte to a byte per n-gram.
    cdef const int32_t* gram_directory
    cdef int gram_bits
    cdef const float* idf
    cdef object search, many_weights
    # Token ids of the finetune graph and the empty base_max (tlserve.core.features), and how many n-grams a
    # text may have for its weights to be computed here (beyond, by the lexicon's NumPy function): given by the
    # Python modules that define them.
    cdef int64_t base_id, zero_id, first_trained_id
    cdef float no_base
    cdef Py_ssize_t many_ngrams, many_char_ngrams
    # Character n-grams within words (units "words+chars"): their shortest and longest lengths, 0 without.
    cdef Py_ssize_t char_low, char_high

    def __init__(self, *, bint frozen, bint mean_max, bint static, Py_ssize_t buckets, bint bigrams,
                 words, rows, slots, int max_probes, search, matrix, sif=None, store_rows=None,
                 trained_buckets=None, gram_hashes=None, gram_ids=None, idf=None, str joiner=" ",
                 many_weights=None, int64_t base_id, int64_t zero_id, int64_t first_trained_id, float no_base,
                 Py_ssize_t many_ngrams, Py_ssize_t many_char_ngrams=0, Py_ssize_t char_low=0,
                 Py_ssize_t char_high=0):
        self.frozen, self.mean_max, self.static = frozen, mean_max, static
        self.buckets, self.bigrams = buckets, bigrams
        self.n_words = len(words)
        self.width = words.dtype.itemsize
        self.mask = <uint32_t>(len(slots) - 1)
        self.max_probes = max_probes
        self.search = search
        self.many_weights = many_weights
        self.base_id, self.zero_id, self.first_trained_id = base_id, zero_id, first_trained_id
        self.no_base, self.many_ngrams = no_base, many_ngrams
        self.char_low, self.char_high, self.many_char_ngrams = char_low, char_high, many_char_ngrams
        self.joiner_space = joiner == " "
        self.has_sif = sif is not None
        self.lexical = gram_hashes is not None
        self.dim = matrix.shape[1]
        empty32 = np.zeros(1, dtype=np.int32)
        arrays = {
            "words": np.ascontiguousarray(words).view(np.uint8) if self.n_words else np.zeros(1, np.uint8),
            "rows": rows, "slots": slots, "matrix": matrix,
            "sif": sif if sif is not None else np.zeros(1, np.float32),
            "store_rows": store_rows if store_rows is not None and len(store_rows) else empty32,
            "trained_buckets": trained_buckets if trained_buckets is not None and len(trained_buckets) else empty32,
            "gram_hashes": gram_hashes if gram_hashes is not None and len(gram_hashes) else np.zeros(1, np.int64),
            "gram_ids": gram_ids if gram_ids is not None and len(gram_ids) else empty32,
            "idf": idf if idf is not None and len(idf) else np.zeros(1, np.float32),
        }
        kinds = {"words": np.uint8, "rows": np.int32, "slots": np.int32, "matrix": np.float32, "sif": np.float32,
                 "store_rows": np.int32, "trained_buckets": np.int32, "gram_hashes": np.int64,
                 "gram_ids": np.int32, "idf": np.float32}
        for name, kind in kinds.items():
            array = arrays[name]
            if array.dtype != kind or not array.flags.c_contiguous:
                raise ValueError(f"{name}: expected C-contiguous {np.dtype(kind)}, got {array.dtype}")
        self.arrays = arrays
        self.n_store_rows = 0 if store_rows is None else len(store_rows)
        self.n_trained_buckets = 0 if trained_buckets is None else len(trained_buckets)
        self.n_grams = 0 if gram_hashes is None else len(gram_hashes)
        self.words = <const uint8_t*>cnp.PyArray_DATA(arrays["words"])
        self.rows = <const int32_t*>cnp.PyArray_DATA(arrays["rows"])
        self.slots = <const int32_t*>cnp.PyArray_DATA(arrays["slots"])
        self.matrix = <const float*>cnp.PyArray_DATA(arrays["matrix"])
        self.sif = <const float*>cnp.PyArray_DATA(arrays["sif"])
        self.store_rows = <const int32_t*>cnp.PyArray_DATA(arrays["store_rows"])
        self.trained_buckets = <const int32_t*>cnp.PyArray_DATA(arrays["trained_buckets"])
        self.gram_hashes = <const int64_t*>cnp.PyArray_DATA(arrays["gram_hashes"])
        self.gram_ids = <const int32_t*>cnp.PyArray_DATA(arrays["gram_ids"])
        self.gram_bits = 1
        while (1 << (self.gram_bits + 3)) < self.n_grams and self.gram_bits < 24:  # 4 to 8 hashes per prefix
            self.gram_bits += 1
        directory = np.zeros((1 << self.gram_bits) + 1, dtype=np.int32)
        self._fill_directory(<int32_t*>cnp.PyArray_DATA(directory))
        arrays["gram_directory"] = directory
        self.gram_directory = <const int32_t*>cnp.PyArray_DATA(directory)
        self.idf = <const float*>cnp.PyArray_DATA(arrays["idf"])

    # --- vocabulary -------------------------------------------------------------------------------------------

    cdef int32_t _row(self, const char* key, Py_ssize_t size) except -2:
        """The store row of a token's UTF-8 bytes, -1 if unknown (`VocabularyIndex._probe`)."""
        cdef uint32_t slot
        cdef int32_t position
        cdef Py_ssize_t probe
        cdef const uint8_t* word
        if self.n_words == 0:
            return -1
        slot = (_crc_update(0xFFFFFFFFu, key, size) ^ 0xFFFFFFFFu) & self.mask
        for probe in range(self.max_probes):
            position = self.slots[slot]
            if position < 0:
                return -1
            word = self.words + position * self.width
            if (position < self.n_words and size <= self.width and memcmp(word, key, size) == 0
                    and (size == self.width or word[size] == 0)):
                return self.rows[position]
            slot = (slot + 1) & self.mask
        # A damaged table must not hang the server: the index's binary search, as in Python.
        return <int32_t>int(self.search([key[:size]])[0])

    # --- one call ---------------------------------------------------------------------------------------------

    def encode(self, list tokens, list units):
        """Graph inputs (dict, in the Python encoder's order), token counts and unknown-token counts per text;
        `units` are the lexical channel's units (the tokens, or characters)."""
        cdef Py_ssize_t n = len(tokens), total = 0, t, k, size, longest = 1
        cdef list text_tokens
        cdef const char* key
        for text_tokens in tokens:
            total += len(text_tokens)
            longest = max(longest, len(text_tokens))
        counts_array = _zeros1(n, cnp.NPY_INT32)
        oov_array = _zeros1(n, cnp.NPY_INT32)
        cdef int32_t* counts = <int32_t*>cnp.PyArray_DATA(counts_array)
        cdef int32_t* oov = <int32_t*>cnp.PyArray_DATA(oov_array)
        cdef int32_t* rows = <int32_t*>malloc(max(total, 1) * sizeof(int32_t))
        if rows == NULL:
            raise MemoryError()
        try:
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
                inputs["features"] = self._pool(rows, counts, n, longest)
            else:
                self._finetune(inputs, tokens, rows, counts, n, longest)
                if self.static:
                    inputs["features"] = self._pool(rows, counts, n, longest)
        finally:
            free(rows)
        if self.lexical:
            self._lexicon(inputs, units)
        return inputs, counts_array, oov_array

    # --- pooling ----------------------------------------------------------------------------------------------

    cdef cnp.ndarray _pool(self, const int32_t* rows, const int32_t* counts, Py_ssize_t n, Py_ssize_t longest):
        """Mean (and max) of each text's known rows, SIF-weighted where the model has weights."""
        cdef Py_ssize_t dim = self.dim, width, t, i, j, k = 0, known
        cdef bint mean_max = self.mean_max, has_sif = self.has_sif
        width = 2 * dim if mean_max else dim
        out_array = _zeros2(n, width, cnp.NPY_FLOAT32)
        cdef float* out = <float*>cnp.PyArray_DATA(out_array)
        cdef float weight
        cdef int32_t row
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
                                vectors[known * dim + j] = self.matrix[row * dim + j] * weight
                        else:
                            memcpy(&vectors[known * dim], &self.matrix[row * dim], dim * sizeof(float))
                        known += 1
                k += counts[t]
                if known:
                    _sum_max(vectors, known, dim, &out[t * width], &out[t * width + dim] if mean_max else NULL)
                    for j in range(dim):
                        out[t * width + j] = out[t * width + j] / <float>known
        free(vectors)
        return out_array

    # --- finetune ---------------------------------------------------------------------------------------------

    cdef inline Py_ssize_t _trained_bucket(self, uint32_t state) noexcept:
        """Position among the trained hashed rows of the row a crc32 state reaches, -1 if untrained."""
        return _position(self.trained_buckets, self.n_trained_buckets,
                         (state ^ 0xFFFFFFFFu) % <uint32_t>self.buckets)

    cdef int _finetune(self, dict inputs, list tokens, const int32_t* rows, const int32_t* counts, Py_ssize_t n,
                       Py_ssize_t longest) except -1:
        """Token ids (store words, unknown words, bigrams) and the sum (and max) of untrained store words."""
        cdef Py_ssize_t t, i, k = 0, found, width = 1, position, before, a, b
        cdef Py_ssize_t dim = self.dim, base_known
        cdef int64_t first_bucket_id = self.first_trained_id + self.n_store_rows
        cdef int32_t row
        cdef uint32_t state
        cdef const char* left
        cdef const char* right
        cdef list text_tokens
        cdef bint mean_max = self.mean_max
        cdef Vec codes, lengths
        codes.data, codes.size, codes.capacity = NULL, 0, 0
        lengths.data, lengths.size, lengths.capacity = NULL, 0, 0
        total_array = _zeros2(n, dim, cnp.NPY_FLOAT32)
        cdef float* total = <float*>cnp.PyArray_DATA(total_array)
        cdef float* maximum = NULL
        if mean_max:
            maximum_array = np.full((n, dim), self.no_base, dtype=np.float32)
            maximum = <float*>cnp.PyArray_DATA(maximum_array)
        cdef float* vectors = <float*>malloc(longest * dim * sizeof(float))
        cdef int64_t* ids
        if vectors == NULL:
            raise MemoryError()
        try:
            for t in range(n):
                text_tokens = tokens[t]
                before = codes.size
                base_known = 0
                for i in range(counts[t]):
                    row = rows[k + i]
                    found = _position(self.store_rows, self.n_store_rows, row) if row >= 0 else -1
                    if found >= 0:
                        _push(&codes, self.first_trained_id + found)
                    elif row >= 0:
                        _push(&codes, self.base_id)
                        memcpy(&vectors[base_known * dim], &self.matrix[row * dim], dim * sizeof(float))
                        base_known += 1
                if base_known:
                    _sum_max(vectors, base_known, dim, &total[t * dim], &maximum[t * dim] if mean_max else NULL)
                if self.buckets:
                    for i in range(counts[t]):
                        if rows[k + i] < 0:  # an untrained unknown word reads the zero row
                            left = PyUnicode_AsUTF8AndSize(text_tokens[i], &a)
                            found = self._trained_bucket(_crc_update(0xFFFFFFFFu, left, a))
                            _push(&codes, first_bucket_id + found if found >= 0 else self.zero_id)
                    if self.bigrams:
                        for i in range(1, counts[t]):  # an untrained bigram is left out
                            left = PyUnicode_AsUTF8AndSize(text_tokens[i - 1], &a)
                            right = PyUnicode_AsUTF8AndSize(text_tokens[i], &b)
                            state = _crc_update(_crc_update(0xFFFFFFFFu, left, a), b"\x1f", 1)
                            found = self._trained_bucket(_crc_update(state, right, b))
                            if found >= 0:
                                _push(&codes, first_bucket_id + found)
                k += counts[t]
                _push(&lengths, codes.size - before)
                width = max(width, codes.size - before)
            ids_array = _zeros2(n, width, cnp.NPY_INT64)
            ids = <int64_t*>cnp.PyArray_DATA(ids_array)
            position = 0
            for t in range(n):
                memcpy(&ids[t * width], &codes.data[position], lengths.data[t] * sizeof(int64_t))
                position += lengths.data[t]
        finally:
            free(vectors)
            free(codes.data)
            free(lengths.data)
        inputs["token_ids"] = ids_array
        inputs["base_sum"] = total_array
        if mean_max:
            inputs["base_max"] = maximum_array
        return 0

    # --- the lexical channel ----------------------------------------------------------------------------------

    cdef inline uint64_t _prefix(self, int64_t key) noexcept nogil:
        """The top `gram_bits` of a hash, in the order of the signed hashes (the sign bit flipped)."""
        return ((<uint64_t>key) ^ (<uint64_t>1 << 63)) >> (64 - self.gram_bits)

    cdef void _fill_directory(self, int32_t* directory) noexcept:
        cdef Py_ssize_t i, prefix = 0, buckets = 1 << self.gram_bits
        for i in range(self.n_grams):
            while prefix <= <Py_ssize_t>self._prefix(self.gram_hashes[i]):
                directory[prefix] = <int32_t>i
                prefix += 1
        while prefix <= buckets:
            directory[prefix] = <int32_t>self.n_grams
            prefix += 1

    cdef int64_t _gram_id(self, const char* data, Py_ssize_t size) noexcept:
        """The id of an n-gram's UTF-8 bytes (0: not in the lexicon): CPython's hash, found among the hashes of its
        prefix."""
        cdef int64_t key = tl_hash_bytes(data, size)
        cdef uint64_t prefix = self._prefix(key)
        cdef Py_ssize_t i = self.gram_directory[prefix], end = self.gram_directory[prefix + 1]
        while i < end:
            if self.gram_hashes[i] == key:
                return self.gram_ids[i]
            if self.gram_hashes[i] > key:
                return 0
            i += 1
        return 0

    cdef int _lexicon(self, dict inputs, list units) except -1:
        """Ids int64 [n, L] and TF-IDF weights float32 [n, L] of each text's known n-grams (`Lexicon.encode`): the
        word (or character) uni- and bigrams, then the character n-grams within words, each block weighted and
        normalised on its own."""
        cdef Py_ssize_t n = len(units), t, i, j, k, m, size, a, b, width = 1, position, count, slot, longest = 0
        cdef Py_ssize_t grams, length, marks, start, end, block, blocks = 2 if self.char_high else 1, column
        cdef list text_units
        cdef list held = []
        cdef int64_t gram
        cdef double square, w
        cdef Vec ids, tfs, lengths, table
        cdef const char** starts = NULL
        cdef Py_ssize_t* sizes = NULL
        cdef Py_ssize_t* chars = NULL
        cdef char* joined = NULL
        cdef Py_ssize_t joined_size = 0
        cdef Py_ssize_t* offsets = NULL
        cdef Py_ssize_t offsets_size = 0
        cdef double* weights = NULL
        cdef int64_t* out_ids
        cdef float* out_weights
        cdef double* idf_data
        cdef double* tf_data
        cdef double* many_data
        cdef cnp.ndarray idf_array, tf_array, many
        ids.data, ids.size, ids.capacity = NULL, 0, 0
        tfs.data, tfs.size, tfs.capacity = NULL, 0, 0
        lengths.data, lengths.size, lengths.capacity = NULL, 0, 0
        table.data, table.size, table.capacity = NULL, 0, 0
        for text_units in units:
            longest = max(longest, len(text_units))
        try:
            starts = <const char**>malloc(max(longest, 1) * sizeof(char*))
            sizes = <Py_ssize_t*>malloc(max(longest, 1) * sizeof(Py_ssize_t))
            chars = <Py_ssize_t*>malloc(max(longest, 1) * sizeof(Py_ssize_t))
            if starts == NULL or sizes == NULL or chars == NULL:
                raise MemoryError()
            for t in range(n):
                text_units = units[t]
                m = len(text_units)
                grams = 2 * m - 1 if m else 0
                for i in range(m):
                    chars[i] = len(<str>text_units[i])
                    try:
                        starts[i] = PyUnicode_AsUTF8AndSize(text_units[i], &sizes[i])
                    except UnicodeEncodeError:  # a lone surrogate (JSON can spell one): its own bytes
                        encoded = (<str>text_units[i]).encode("utf-8", "surrogatepass")
                        held.append(encoded)
                        starts[i], sizes[i] = <bytes>encoded, len(encoded)
                    if self.char_high:  # "<token>" has chars + 2 characters
                        for k in range(self.char_low, min(self.char_high, chars[i] + 2) + 1):
                            grams += chars[i] + 3 - k
                # Each block's distinct ids in first-seen order, with their counts: an open-addressing table of
                # positions into this text's part of `ids` (a word n-gram's id is never a character n-gram's).
                size = 16
                while size < 2 * grams:
                    size <<= 1
                _reserve(&table, size)
                for i in range(size):
                    table.data[i] = -1
                position = ids.size
                for i in range(2 * m - 1 if m else 0):
                    if i < m:
                        gram = self._gram_id(starts[i], sizes[i])
                    else:
                        j = i - m
                        a, b = sizes[j], sizes[j + 1]
                        _grow(&joined, &joined_size, a + b + 1)
                        memcpy(joined, starts[j], a)
                        if self.joiner_space:
                            joined[a] = 32
                            memcpy(joined + a + 1, starts[j + 1], b)
                            gram = self._gram_id(joined, a + b + 1)
                        else:
                            memcpy(joined + a, starts[j + 1], b)
                            gram = self._gram_id(joined, a + b)
                    self._count(gram, &ids, &tfs, &table, size)
                _push(&lengths, ids.size - position)
                if self.char_high:
                    position = ids.size
                    for i in range(m):
                        # "#<token>" in `joined`; `offsets` holds where each character of "<token>" starts in it.
                        length = sizes[i] + 3
                        marks = chars[i] + 2
                        _grow(&joined, &joined_size, 2 * length)
                        if marks + 1 > offsets_size:
                            offsets_size = 2 * (marks + 1)
                            free(offsets)
                            offsets = <Py_ssize_t*>malloc(offsets_size * sizeof(Py_ssize_t))
                            if offsets == NULL:
                                raise MemoryError()
                        joined[0], joined[1] = 35, 60  # "#", "<"
                        memcpy(joined + 2, starts[i], sizes[i])
                        joined[length - 1] = 62  # ">"
                        k = 0
                        for j in range(1, length):
                            if (<uint8_t>joined[j] & 0xC0) != 0x80:  # a character's first byte
                                offsets[k] = j
                                k += 1
                        offsets[k] = length
                        # The n-gram "#" + "<token>"[j:j + k], built in the second half of `joined`.
                        for k in range(self.char_low, min(self.char_high, marks) + 1):
                            for j in range(marks - k + 1):
                                start, end = offsets[j], offsets[j + k]
                                joined[length] = 35
                                memcpy(joined + length + 1, joined + start, end - start)
                                gram = self._gram_id(joined + length, end - start + 1)
                                self._count(gram, &ids, &tfs, &table, size)
                    _push(&lengths, ids.size - position)
                count = 0
                for block in range(blocks):
                    count += lengths.data[t * blocks + block]
                width = max(width, count)
            ids_array = _zeros2(n, width, cnp.NPY_INT64)
            weights_array = _zeros2(n, width, cnp.NPY_FLOAT32)
            out_ids = <int64_t*>cnp.PyArray_DATA(ids_array)
            out_weights = <float*>cnp.PyArray_DATA(weights_array)
            weights = <double*>malloc(width * sizeof(double))
            if weights == NULL:
                raise MemoryError()
            position = 0
            for t in range(n):
                column = 0
                for block in range(blocks):
                    count = lengths.data[t * blocks + block]
                    memcpy(&out_ids[t * width + column], &ids.data[position], count * sizeof(int64_t))
                    if count > (self.many_char_ngrams if block else self.many_ngrams):
                        idf_array = _zeros1(count, cnp.NPY_FLOAT64)
                        tf_array = _zeros1(count, cnp.NPY_FLOAT64)
                        idf_data = <double*>cnp.PyArray_DATA(idf_array)
                        tf_data = <double*>cnp.PyArray_DATA(tf_array)
                        for i in range(count):
                            idf_data[i] = <double>self.idf[ids.data[position + i] - 1]
                            tf_data[i] = <double>tfs.data[position + i]
                        many = np.ascontiguousarray(self.many_weights(tf_array, idf_array), dtype=np.float64)
                        many_data = <double*>cnp.PyArray_DATA(many)
                        for i in range(count):
                            out_weights[t * width + column + i] = <float>many_data[i]
                    elif count:
                        square = 0.0
                        for i in range(count):
                            w = (1.0 + log(<double>tfs.data[position + i])) * <double>self.idf[ids.data[position + i] - 1]
                            weights[i] = w
                            square += w * w
                        square = sqrt(square)
                        for i in range(count):
                            out_weights[t * width + column + i] = <float>(weights[i] / square)
                    position += count
                    column += count
        finally:
            free(starts)
            free(sizes)
            free(chars)
            free(joined)
            free(offsets)
            free(weights)
            free(ids.data)
            free(tfs.data)
            free(lengths.data)
            free(table.data)
        inputs["lexicon_ids"] = ids_array
        inputs["lexicon_weights"] = weights_array
        return 0

    cdef inline int _count(self, int64_t gram, Vec* ids, Vec* tfs, Vec* table, Py_ssize_t size) except -1:
        """One more of `gram` in the current text (0: not in the lexicon, not counted)."""
        cdef Py_ssize_t slot
        if gram == 0:
            return 0
        slot = gram & (size - 1)
        while table.data[slot] >= 0 and ids.data[table.data[slot]] != gram:
            slot = (slot + 1) & (size - 1)
        if table.data[slot] >= 0:
            tfs.data[table.data[slot]] += 1
        else:
            table.data[slot] = ids.size
            _push(ids, gram)
            _push(tfs, 1)
        return 0
