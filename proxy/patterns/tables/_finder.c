/* proxy.patterns.tables._finder: a table's lookups, compiled.
 *
 * Why this exists: a single lookup in Python (Table.lookup, read.py) is about fifteen
 * bytecodes around one mm.find, and the DNS door, the query door's single items and the
 * overlay's filter test pay that on every key; a batch (lookup_many) is some twenty numpy
 * passes with a temporary array each. Here the same search is one C call: the bucket from
 * the key's first bits, a binary search of the bucket's rows by memcmp, and for an overlaid
 * table its touched keys first, in a hash table of their own (below).
 *
 * The format is the one proxy/patterns/tables/__init__.py describes; read.py checked the
 * header and the sizes before a Finder is made. What read.py does not check, the bucket
 * index's entries between its first and last, is clamped here to the key block, so a
 * corrupt file finds nothing instead of reading outside its map.
 *
 * tests/proxy/patterns/test_finder.py holds every method equal to the Python path (the
 * classes' own lookup methods and _lookup_many_plain), which stays the path when this
 * module is not built (RAMPART_PLAIN_LOOKUPS=1 also chooses it).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_finder.h"

/* A touched key's place in an overlaid table's hash table: its fingerprint (32 bits of its
   hash that do not pick the slot) and its index among the touched keys (-1: empty). The
   table has 2**k slots of 8 bytes, at most half full, so a probe reads one slot, rarely
   two (60k touched keys take 1 MB). Python's bit filter and dict (table_overlay.py) answer
   the same question on the plain path. */
typedef struct {
    uint32_t fp;
    int32_t at;
} Slot;

#define BLOCK 32          /* keys whose memory reads overlap in lookup_many */
#define PREFETCH_LINES 8  /* cache lines of a bucket's rows fetched ahead: 16 rows of 32 bytes,
                             the usual bucket (tables/__init__.py) */

typedef struct {
    PyObject_HEAD
    Py_buffer view;         /* the table's map, held while the Finder is open */
    int held;
    const unsigned char *keys;   /* N * W sorted keys */
    const unsigned char *ends;   /* range tables: N * W ends; else NULL */
    const unsigned char *index;  /* 2**B + 1 little-endian uint64 */
    Py_ssize_t count, width;
    int shift;                   /* 24 - B */
    /* an overlaid table: the keys it touches (removed from the base, or added), laid end
       to end, their handles (-1: removed), and an open-addressing table over them */
    Py_buffer tview, hview;
    int theld, hheld;
    Slot *slots;                 /* NULL: not overlaid */
    uint64_t mask;               /* slots - 1 */
    /* and a private copy of the base's bucket index, clamped, whose top bit marks the
       buckets a touched key falls in: a lookup reads its bucket's entry anyway, so an
       untouched bucket costs nothing more (a filter of its own would be one more cache
       miss a key); 8 bytes a bucket, half a byte a row */
    uint64_t *marks;
    PyObject *error;             /* PatternError */
    PyObject *name;              /* the table file's name, in messages */
} Finder;

static inline uint64_t le64(const unsigned char *p) {
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = v << 8 | p[i];
    return v;
}

static inline uint32_t top24(const unsigned char *k) {
    return (uint32_t)k[0] << 16 | (uint32_t)k[1] << 8 | k[2];
}

#define MARK (1ULL << 63)

/* The bucket of a key as [lo, hi) rows, clamped to the key block; 1 when an overlaid
   table's touched keys fall in it. */
static inline int bucket(const Finder *f, const unsigned char *key, Py_ssize_t *lo, Py_ssize_t *hi) {
    uint32_t b = top24(key) >> f->shift;
    uint64_t a, z;
    if (f->marks != NULL) {
        a = f->marks[b];
        z = f->marks[b + 1] & ~MARK;
    } else {
        uint64_t n = (uint64_t)f->count;
        a = le64(f->index + 8 * (size_t)b);
        z = le64(f->index + 8 * ((size_t)b + 1));
        if (a > n) a = n;
        if (z > n) z = n;
    }
    *lo = (Py_ssize_t)(a & ~MARK);
    *hi = (Py_ssize_t)(z < (a & ~MARK) ? (a & ~MARK) : z);
    return (int)(a >> 63);
}

static inline const void *bucket_entry(const Finder *f, const unsigned char *key) {
    uint32_t b = top24(key) >> f->shift;
    return f->marks != NULL ? (const void *)&f->marks[b] : (const void *)(f->index + 8 * (size_t)b);
}

/* The row of key among rows [lo, hi) (its bucket), or -1. */
static Py_ssize_t search(const Finder *f, const unsigned char *key, Py_ssize_t lo, Py_ssize_t hi) {
    size_t w = (size_t)f->width;
    while (lo < hi) {
        Py_ssize_t mid = lo + (hi - lo) / 2;
        int c = memcmp(f->keys + (size_t)mid * w, key, w);
        if (c == 0) return mid;
        if (c < 0) lo = mid + 1; else hi = mid;
    }
    return -1;
}

/* The row whose [start, end] holds key, its bucket being rows [lo, hi), or -1. */
static Py_ssize_t range_in(const Finder *f, const unsigned char *key, Py_ssize_t lo, Py_ssize_t hi) {
    size_t w = (size_t)f->width;
    while (lo < hi) {  /* the last row in the bucket with start <= key; else the one before */
        Py_ssize_t mid = lo + (hi - lo) / 2;
        if (memcmp(f->keys + (size_t)mid * w, key, w) <= 0) lo = mid + 1; else hi = mid;
    }
    Py_ssize_t row = lo - 1;
    if (row < 0) return -1;
    return memcmp(key, f->ends + (size_t)row * w, w) <= 0 ? row : -1;
}

static int closed(Finder *f) {
    if (!f->held) {
        PyErr_Format(f->error, "%U: table is closed", f->name);
        return 1;
    }
    return 0;
}

static int wrong_width(Finder *f, Py_ssize_t got) {
    if (got != f->width) {
        PyErr_Format(f->error, "%U: key is %zd bytes, expected %zd", f->name, got, f->width);
        return 1;
    }
    return 0;
}

static inline uint64_t load_be(const unsigned char *p, Py_ssize_t n) {
    uint64_t v = 0;
    for (Py_ssize_t i = 0; i < n; i++) v = v << 8 | p[i];
    return v;
}

/* A key's hash: its first and last (up to) 8 bytes, mixed (digests are uniform already;
   the mix keeps other keys from crowding a few slots). */
static inline uint64_t key_hash(const unsigned char *key, Py_ssize_t w) {
    Py_ssize_t n = w < 8 ? w : 8;
    uint64_t a = load_be(key, n), b = load_be(key + w - n, n);
    uint64_t x = (a ^ (b << 29 | b >> 35)) * 0x9E3779B97F4A7C15ULL;
    return x ^ (x >> 31);
}

/* An overlaid table's touched keys: 1 and *h set when key is one (h -1: removed), else 0. */
static inline int touched(const Finder *f, const unsigned char *key, uint64_t hash, long long *h) {
    uint32_t fp = (uint32_t)hash;
    size_t w = (size_t)f->width;
    for (uint64_t i = hash >> 32 & f->mask;; i = (i + 1) & f->mask) {
        const Slot *s = &f->slots[i];
        if (s->at < 0) return 0;
        if (s->fp == fp && memcmp((const unsigned char *)f->tview.buf + (size_t)s->at * w, key, w) == 0) {
            *h = ((const int64_t *)f->hview.buf)[s->at];
            return 1;
        }
    }
}

/* The row or handle of one key of the table's width (-1: none): an overlaid table's touched
   keys first, when its bucket is marked, then the bucket's search. */
static Py_ssize_t find_one(const Finder *f, const unsigned char *key) {
    long long h;
    Py_ssize_t lo, hi;
    if (bucket(f, key, &lo, &hi) && touched(f, key, key_hash(key, f->width), &h)) return h >= 0 ? (Py_ssize_t)h : -1;
    return f->ends != NULL ? range_in(f, key, lo, hi) : search(f, key, lo, hi);
}

static PyObject *row_or_none(Py_ssize_t row) {
    if (row < 0) Py_RETURN_NONE;
    return PyLong_FromSsize_t(row);
}

/* ------------------------------------------------------------------ methods */

static PyObject *Finder_lookup(Finder *f, PyObject *key_obj) {
    if (closed(f)) return NULL;
    const unsigned char *key;
    Py_ssize_t len;
    Py_buffer kb;
    int got_buffer = 0;
    if (PyBytes_CheckExact(key_obj)) {
        key = (const unsigned char *)PyBytes_AS_STRING(key_obj);
        len = PyBytes_GET_SIZE(key_obj);
    } else {
        if (PyObject_GetBuffer(key_obj, &kb, PyBUF_SIMPLE) < 0) return NULL;
        key = kb.buf;
        len = kb.len;
        got_buffer = 1;
    }
    PyObject *out = NULL;
    if (wrong_width(f, len)) goto done;
    out = row_or_none(find_one(f, key));
done:
    if (got_buffer) PyBuffer_Release(&kb);
    return out;
}

static PyObject *Finder_lookup_many(Finder *f, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "lookup_many(keys, out): keys laid end to end, out int64s");
        return NULL;
    }
    if (closed(f)) return NULL;
    Py_buffer kb, ob;
    if (PyObject_GetBuffer(args[0], &kb, PyBUF_C_CONTIGUOUS) < 0) return NULL;
    if (PyObject_GetBuffer(args[1], &ob, PyBUF_WRITABLE | PyBUF_C_CONTIGUOUS) < 0) {
        PyBuffer_Release(&kb);
        return NULL;
    }
    PyObject *out = NULL;
    Py_ssize_t w = f->width, n = kb.len / w;
    if (kb.len % w || ob.len != n * (Py_ssize_t)sizeof(int64_t)) {
        PyErr_Format(PyExc_ValueError, "lookup_many: %zd bytes of keys %zd wide, %zd bytes out",
                     kb.len, w, ob.len);
        goto done;
    }
    const unsigned char *keys = kb.buf;
    int64_t *rows = ob.buf;
    /* A block of keys at a time, in three passes: every key's bucket index entry is
       fetched, then every bucket's rows, then each is searched. A large table misses the
       CPU cache on both reads of every key; done key after key, each miss waits for the one
       before (numpy's passes over the whole batch were faster than that), while a block's
       misses overlap. */
    Py_ssize_t lo[BLOCK], hi[BLOCK];
    uint64_t hash[BLOCK];
    int marked[BLOCK];
    for (Py_ssize_t start = 0; start < n; start += BLOCK) {
        Py_ssize_t m = n - start < BLOCK ? n - start : BLOCK;
        const unsigned char *block = keys + (size_t)start * (size_t)w;
        for (Py_ssize_t j = 0; j < m; j++)
            __builtin_prefetch(bucket_entry(f, block + (size_t)j * w));
        for (Py_ssize_t j = 0; j < m; j++) {
            const unsigned char *key = block + (size_t)j * w;
            marked[j] = bucket(f, key, &lo[j], &hi[j]);
            if (marked[j]) {
                hash[j] = key_hash(key, w);
                __builtin_prefetch(&f->slots[hash[j] >> 32 & f->mask]);
            }
            const unsigned char *first = f->keys + (size_t)lo[j] * w, *last = f->keys + (size_t)hi[j] * w;
            for (int line = 0; first < last && line < PREFETCH_LINES; first += 64, line++)
                __builtin_prefetch(first);
        }
        for (Py_ssize_t j = 0; j < m; j++) {
            const unsigned char *key = block + (size_t)j * w;
            int64_t *row = &rows[start + j];
            long long h;
            if (marked[j] && touched(f, key, hash[j], &h)) {
                *row = h >= 0 ? h : -1;
                continue;
            }
            *row = f->ends != NULL ? range_in(f, key, lo[j], hi[j]) : search(f, key, lo[j], hi[j]);
        }
    }
    out = Py_NewRef(Py_None);
done:
    PyBuffer_Release(&kb);
    PyBuffer_Release(&ob);
    return out;
}

static PyObject *Finder_release(Finder *f, PyObject *unused) {
    if (f->held) {
        f->held = 0;
        PyBuffer_Release(&f->view);
    }
    if (f->theld) {
        f->theld = 0;
        PyBuffer_Release(&f->tview);
    }
    if (f->hheld) {
        f->hheld = 0;
        PyBuffer_Release(&f->hview);
    }
    PyMem_Free(f->slots);
    f->slots = NULL;
    PyMem_Free(f->marks);
    f->marks = NULL;
    Py_RETURN_NONE;
}

/* Finder(map, keys_off, index_off, ends_off, count, width, bits, error, name
 *        [, touched_keys, handles]): ends_off < 0 for a table of keys; an overlaid table
 * passes the keys it touches laid end to end and their handles as int64s. */
static int Finder_init(Finder *f, PyObject *args, PyObject *kw) {
    PyObject *map, *error, *name, *tkeys = NULL, *handles = NULL;
    Py_ssize_t keys_off, index_off, ends_off, count, width;
    int bits;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "Finder: positional arguments only");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "OnnnnniOU|OO:Finder", &map, &keys_off, &index_off, &ends_off,
                          &count, &width, &bits, &error, &name, &tkeys, &handles))
        return -1;
    if (f->held) {
        PyErr_SetString(PyExc_RuntimeError, "Finder: made once");
        return -1;
    }
    if (PyObject_GetBuffer(map, &f->view, PyBUF_SIMPLE) < 0) return -1;
    f->held = 1;
    Py_ssize_t size = f->view.len;
    if (!(bits >= 1 && bits <= 24 && width >= 3 && width <= 64 && count >= 0 && index_off >= 0
          && keys_off >= 0 && index_off + (((Py_ssize_t)1 << bits) + 1) * 8 <= size
          && count <= (size - keys_off) / width
          && (ends_off < 0 || (ends_off <= size && count <= (size - ends_off) / width)))) {
        PyErr_SetString(PyExc_ValueError, "Finder: sections outside the map");
        return -1;
    }
    const unsigned char *base = f->view.buf;
    f->keys = base + keys_off;
    f->index = base + index_off;
    f->ends = ends_off < 0 ? NULL : base + ends_off;
    f->count = count;
    f->width = width;
    f->shift = 24 - bits;
    Py_XSETREF(f->error, Py_NewRef(error));
    Py_XSETREF(f->name, Py_NewRef(name));
    if (tkeys != NULL && handles != NULL) {
        if (PyObject_GetBuffer(tkeys, &f->tview, PyBUF_C_CONTIGUOUS) < 0) return -1;
        f->theld = 1;
        if (PyObject_GetBuffer(handles, &f->hview, PyBUF_C_CONTIGUOUS) < 0) return -1;
        f->hheld = 1;
        Py_ssize_t n = f->tview.len / width;
        if (f->tview.len % width || f->hview.len != n * 8 || n >= INT32_MAX / 2) {
            PyErr_SetString(PyExc_ValueError, "Finder: touched keys and handles differ");
            return -1;
        }
        uint64_t nslots = 8;
        while (nslots < 2 * (uint64_t)n) nslots <<= 1;
        f->slots = PyMem_Malloc(nslots * sizeof(Slot));
        if (f->slots == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        f->mask = nslots - 1;
        for (uint64_t i = 0; i < nslots; i++) f->slots[i].at = -1;
        const unsigned char *k = f->tview.buf;
        for (Py_ssize_t j = 0; j < n; j++) {  /* a key twice (a caller's bug): the first stays */
            long long h;
            uint64_t hash = key_hash(k + (size_t)j * width, width);
            if (touched(f, k + (size_t)j * width, hash, &h)) continue;
            uint64_t i = hash >> 32 & f->mask;
            while (f->slots[i].at >= 0) i = (i + 1) & f->mask;
            f->slots[i].fp = (uint32_t)hash;
            f->slots[i].at = (int32_t)j;
        }
        size_t entries = ((size_t)1 << bits) + 1;
        f->marks = PyMem_Malloc(entries * sizeof(uint64_t));
        if (f->marks == NULL) {
            PyErr_NoMemory();
            return -1;
        }
        for (size_t i = 0; i < entries; i++) {
            uint64_t v = le64(f->index + 8 * i);
            f->marks[i] = v > (uint64_t)count ? (uint64_t)count : v;
        }
        for (Py_ssize_t j = 0; j < n; j++)
            f->marks[top24(k + (size_t)j * width) >> f->shift] |= MARK;
    }
    return 0;
}

static int Finder_traverse(Finder *f, visitproc visit, void *arg) {
    Py_VISIT(f->error);
    return 0;
}

static void Finder_dealloc(Finder *f) {
    PyObject_GC_UnTrack(f);
    Finder_release(f, NULL);
    Py_CLEAR(f->error);
    Py_CLEAR(f->name);
    Py_TYPE(f)->tp_free((PyObject *)f);
}

static int Finder_clear(Finder *f) {
    Py_CLEAR(f->error);
    return 0;
}

/* ------------------------------------------------------------------ the C interface */

static PyTypeObject FinderType;

static int api_is_finder(PyObject *o) {
    return Py_IS_TYPE(o, &FinderType);
}

static Py_ssize_t api_find(PyObject *o, const unsigned char *key, Py_ssize_t len) {
    Finder *f = (Finder *)o;
    if (!f->held || len != f->width) return -2;
    return find_one(f, key);
}

static FinderAPI api = {api_is_finder, api_find};

static PyMethodDef Finder_methods[] = {
    {"lookup", (PyCFunction)Finder_lookup, METH_O,
     "lookup(key) -> row or None (a range table: the row whose range holds key)"},
    {"lookup_many", (PyCFunction)(void (*)(void))Finder_lookup_many, METH_FASTCALL,
     "lookup_many(keys, out): the row of each key laid end to end in keys (-1: none) into out"},
    {"release", (PyCFunction)Finder_release, METH_NOARGS, "let go of the map: lookups then raise"},
    {NULL},
};

static PyTypeObject FinderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "proxy.patterns.tables._finder.Finder",
    .tp_basicsize = sizeof(Finder),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "A table's lookups over its map (see the module's source for why).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Finder_init,
    .tp_dealloc = (destructor)Finder_dealloc,
    .tp_traverse = (traverseproc)Finder_traverse,
    .tp_clear = (inquiry)Finder_clear,
    .tp_methods = Finder_methods,
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_finder", "A table's lookups, compiled (see _finder.c).", -1, NULL,
};

PyMODINIT_FUNC PyInit__finder(void) {
    if (PyType_Ready(&FinderType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Finder", (PyObject *)&FinderType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    PyObject *capsule = PyCapsule_New(&api, FINDER_CAPSULE, NULL);
    if (capsule == NULL || PyModule_AddObjectRef(m, "_C_API", capsule) < 0) {
        Py_XDECREF(capsule);
        Py_DECREF(m);
        return NULL;
    }
    Py_DECREF(capsule);
    return m;
}
