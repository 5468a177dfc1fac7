/* proxy.dns._lane: the DNS door's common answers, compiled.
 *
 * Why this exists: a DNSBL query about a name asked for the first time (a mail server's
 * usual traffic) cost the door 16-30 us of Python (reading the question, the zone and
 * the item, hashing the name's suffixes, the table searches, the answer's objects, the
 * response), on top of the 10 us its transport costs; rbldnsd answers in 7 us.
 * Lane.answer does that reading, searching and writing in one call, with Python called
 * only for the administrator's lists (``match_domain``) and, once per kind of answer, to
 * make the answer object that counting and the query log read (``outcome``).
 *
 * It answers exactly what Answerer._fast (proxy/dns/answers.py) answers, for the queries
 * it takes: one A or ANY question about an IPv4 address or a host name in a zone, in the
 * common shape, decided by the pattern (or, with nothing to relay to and no cached
 * answers, not in it). For every other query, and on any doubt (a list entry matches, a
 * bad record, a closed table, a name that starts with a digit), it returns None and the
 * Python path answers. tests/proxy/dns/test_lane.py holds the two equal, byte for byte,
 * with their counts and log rows.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

#include "_finder.h"

static FinderAPI *finder_api;

/* ------------------------------------------------------------------ SHA-256 (FIPS 180-4) */

static const uint32_t K256[64] = {
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
};

#define ROR(x, n) ((x) >> (n) | (x) << (32 - (n)))

static void sha256_block(uint32_t h[8], const unsigned char *p) {
    uint32_t w[64];
    for (int i = 0; i < 16; i++)
        w[i] = (uint32_t)p[4 * i] << 24 | (uint32_t)p[4 * i + 1] << 16 | (uint32_t)p[4 * i + 2] << 8 | p[4 * i + 3];
    for (int i = 16; i < 64; i++) {
        uint32_t s0 = ROR(w[i - 15], 7) ^ ROR(w[i - 15], 18) ^ (w[i - 15] >> 3);
        uint32_t s1 = ROR(w[i - 2], 17) ^ ROR(w[i - 2], 19) ^ (w[i - 2] >> 10);
        w[i] = w[i - 16] + s0 + w[i - 7] + s1;
    }
    uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4], f = h[5], g = h[6], k = h[7];
    for (int i = 0; i < 64; i++) {
        uint32_t t1 = k + (ROR(e, 6) ^ ROR(e, 11) ^ ROR(e, 25)) + ((e & f) ^ (~e & g)) + K256[i] + w[i];
        uint32_t t2 = (ROR(a, 2) ^ ROR(a, 13) ^ ROR(a, 22)) + ((a & b) ^ (a & c) ^ (b & c));
        k = g; g = f; f = e; e = d + t1; d = c; c = b; b = a; a = t1 + t2;
    }
    h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e; h[5] += f; h[6] += g; h[7] += k;
}

static void sha256(const unsigned char *data, size_t n, unsigned char out[32]) {
    uint32_t h[8] = {0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a,
                     0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19};
    size_t done = 0;
    for (; done + 64 <= n; done += 64) sha256_block(h, data + done);
    unsigned char last[128] = {0};
    size_t rest = n - done;
    memcpy(last, data + done, rest);
    last[rest] = 0x80;
    size_t blocks = rest + 9 <= 64 ? 1 : 2;
    uint64_t bits = (uint64_t)n * 8;
    for (int i = 0; i < 8; i++) last[blocks * 64 - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t i = 0; i < blocks; i++) sha256_block(h, last + 64 * i);
    for (int i = 0; i < 8; i++) {
        out[4 * i] = (unsigned char)(h[i] >> 24);
        out[4 * i + 1] = (unsigned char)(h[i] >> 16);
        out[4 * i + 2] = (unsigned char)(h[i] >> 8);
        out[4 * i + 3] = (unsigned char)h[i];
    }
}

/* ------------------------------------------------------------------ the lane */

#define MAX_ZONES 2
#define MAX_PACKET 512
#define MAX_DOMAIN 253

typedef struct {           /* a rated table: its Finder and the columns a hit reads */
    PyObject *finder;      /* NULL: the pattern has no such table */
    Py_ssize_t base;       /* rows of the base (handles past it are an overlay's additions) */
    Py_buffer col[2][4];   /* [base, added] x [rating u1, score u1, category u2, prefix u1] */
    int held[2][4];
} Rated;

typedef struct {
    PyObject_HEAD
    int nzones;
    unsigned char zwire[MAX_ZONES][256];
    Py_ssize_t zlen[MAX_ZONES];
    int zip[MAX_ZONES];
    PyObject *zkind[MAX_ZONES];
    Rated domains, ip4;
    PyObject *outcome;     /* (rating, category, score) -> (severity, code or None, answer) or None */
    PyObject *outcomes;    /* dict: what outcome made, by rating << 24 | category << 8 | score */
    PyObject *miss;        /* (code None, answer, source) for a name in no table, or None */
    PyObject *match_domain;
    PyObject *cache;       /* the answer cache: misses go to Python while it holds anything */
    PyObject *pattern;     /* "pattern" */
    PyObject *noerror, *nxdomain;
    unsigned char a_fixed[8], soa_fixed[10], timers[20], opt_plain[11], opt_do[11];
} Lane;

static const unsigned char HOSTMASTER[11] = "\x0ahostmaster";

static int col_ok(const Rated *t, int side, int c, Py_ssize_t row, Py_ssize_t size) {
    return t->held[side][c] && (row + 1) * size <= t->col[side][c].len;
}

static long col_value(const Rated *t, int c, Py_ssize_t handle, Py_ssize_t size) {
    int side = handle >= t->base;
    Py_ssize_t row = side ? handle - t->base : handle;
    if (!col_ok(t, side, c, row, size)) return -1;
    const unsigned char *p = (const unsigned char *)t->col[side][c].buf + row * size;
    return size == 1 ? p[0] : (long)(p[0] | p[1] << 8);
}

/* The outcome of a hit (its tuple, borrowed), or NULL (no exception: the Python path
   then reads the record and says what is wrong with it). */
static PyObject *hit_outcome(Lane *l, const Rated *t, Py_ssize_t handle) {
    long rating = col_value(t, 0, handle, 1), score = col_value(t, 1, handle, 1);
    long category = col_value(t, 2, handle, 2);
    if (rating < 0 || score < 0 || category < 0) return NULL;
    PyObject *key = PyLong_FromLong(rating << 24 | category << 8 | score);
    if (key == NULL) return NULL;
    PyObject *got = PyDict_GetItemWithError(l->outcomes, key);
    if (got == NULL && !PyErr_Occurred()) {
        PyObject *made = PyObject_CallFunction(l->outcome, "lll", rating, category, score);
        if (made != NULL && made != Py_None && PyTuple_Check(made) && PyTuple_GET_SIZE(made) == 3
                && PyDict_SetItem(l->outcomes, key, made) == 0)
            got = made;
        Py_XDECREF(made);  /* the dict holds it */
    }
    Py_DECREF(key);
    return got;
}

/* The reversed-octet labels of the IP zone: four of 1-3 digits, each a number below 256
   with no leading zero; the address, or -1. */
static int64_t ip4_of(const unsigned char *p, Py_ssize_t pos, Py_ssize_t at) {
    uint32_t octets[4];
    for (int i = 0; i < 4; i++) {
        if (pos >= at) return -1;
        int len = p[pos];
        if (len < 1 || len > 3 || pos + 1 + len > at) return -1;
        uint32_t v = 0;
        for (int j = 1; j <= len; j++) {
            if (p[pos + j] < '0' || p[pos + j] > '9') return -1;
            v = v * 10 + (p[pos + j] - '0');
        }
        if ((len > 1 && p[pos + 1] == '0') || v > 255) return -1;
        octets[i] = v;
        pos += 1 + len;
    }
    if (pos != at) return -1;
    return (int64_t)(octets[3] << 24 | octets[2] << 16 | octets[1] << 8 | octets[0]);
}

/* a.b.c.d into out (at least 16 bytes): its length (no printf: it showed in profiles) */
static Py_ssize_t dotted(char *out, uint32_t ip) {
    Py_ssize_t n = 0;
    for (int shift = 24; shift >= 0; shift -= 8) {
        unsigned v = ip >> shift & 255;
        if (v >= 100) out[n++] = (char)('0' + v / 100);
        if (v >= 10) out[n++] = (char)('0' + v / 10 % 10);
        out[n++] = (char)('0' + v % 10);
        if (shift) out[n++] = '.';
    }
    return n;
}

/* The host name the labels from 12 to at spell, dotted, into name; its length or -1. */
static Py_ssize_t host_of(const unsigned char *p, Py_ssize_t at, char *name) {
    Py_ssize_t pos = 12, n = 0;
    int labels = 0;
    while (pos < at) {
        int len = p[pos];
        if (len < 1 || len > 63 || pos + 1 + len > at) return -1;
        if (labels++) name[n++] = '.';
        for (int j = 1; j <= len; j++) {
            unsigned char c = p[pos + j];
            if (!((c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' || c == '-')) return -1;
            if (n >= MAX_DOMAIN) return -1;
            name[n++] = (char)c;
        }
        pos += 1 + len;
    }
    if (pos != at || n == 0) return -1;
    if (labels == 1 && ((n == 4 && !memcmp(name, "test", 4)) || (n == 7 && !memcmp(name, "invalid", 7))))
        return -1;  /* the RFC 5782 test entries: the Python path answers them */
    if (name[0] >= '0' && name[0] <= '9') return -1;  /* maybe an address: the Python path says */
    return n;
}

/* The OPT record the response carries (answers.py, wire.opt_echo): 0 and *opt set
   (NULL: none), or -1 when the Python path would not take the query. */
static int opt_echo(Lane *l, const unsigned char *p, Py_ssize_t n, Py_ssize_t at, const unsigned char **opt) {
    *opt = NULL;
    if (!p[11]) return at == n ? 0 : -1;
    if (at + 11 > n || p[at] != 0) return -1;
    unsigned rtype = p[at + 1] << 8 | p[at + 2], ext = p[at + 5], version = p[at + 6];
    unsigned eflags = p[at + 7] << 8 | p[at + 8], rdlen = p[at + 9] << 8 | p[at + 10];
    if (rtype != 41 || version || ext || at + 11 + (Py_ssize_t)rdlen != n) return -1;
    Py_ssize_t pos = at + 11;
    while (pos < n) {
        if (pos + 4 > n) return -1;
        pos += 4 + (p[pos + 2] << 8 | p[pos + 3]);
    }
    if (pos != n) return -1;
    *opt = eflags & 0x8000 ? l->opt_do : l->opt_plain;
    return 0;
}

static PyObject *Lane_answer(Lane *l, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyBytes_CheckExact(args[0])) {
        PyErr_SetString(PyExc_TypeError, "answer(packet: bytes, client)");
        return NULL;
    }
    const unsigned char *p = (const unsigned char *)PyBytes_AS_STRING(args[0]);
    Py_ssize_t n = PyBytes_GET_SIZE(args[0]);
    /* the common shape (answers.py, Answerer._fast): a query, opcode 0, one question */
    if (n < 17 || n > MAX_PACKET || p[2] & 0xF8 || memcmp(p + 4, "\0\1\0\0\0\0", 6) || p[10])
        Py_RETURN_NONE;
    unsigned char low[MAX_PACKET];
    for (Py_ssize_t i = 0; i < n; i++) low[i] = p[i] >= 'A' && p[i] <= 'Z' ? p[i] | 0x20 : p[i];
    int z = -1;
    Py_ssize_t at = -1;
    for (int i = 0; i < l->nzones && z < 0; i++) {  /* the first place the zone's name is */
        for (Py_ssize_t j = 12; j + l->zlen[i] <= n; j++) {
            if (low[j] == l->zwire[i][0] && !memcmp(low + j, l->zwire[i], l->zlen[i])) {
                z = i;
                at = j;
                break;
            }
        }
    }
    if (z < 0 || at == 12) Py_RETURN_NONE;  /* outside, or the apex */
    Py_ssize_t qend = at + l->zlen[z] + 4;
    if (qend > n || qend - 17 >= 255) Py_RETURN_NONE;
    if (!(p[qend - 4] == 0 && (p[qend - 3] == 1 || p[qend - 3] == 255) && p[qend - 2] == 0 && p[qend - 1] == 1))
        Py_RETURN_NONE;  /* A or ANY, class IN */
    const unsigned char *opt;
    if (opt_echo(l, p, n, qend, &opt) < 0) Py_RETURN_NONE;

    char name[MAX_DOMAIN + 1];
    Py_ssize_t len;
    int64_t ip = -1;
    Rated *t;
    if (l->zip[z]) {
        ip = ip4_of(low, 12, at);
        if (ip < 0 || ip == 0x7F000002 || ip == 0x7F000001) Py_RETURN_NONE;  /* test entries */
        len = dotted(name, (uint32_t)ip);
        t = &l->ip4;
    } else {
        len = host_of(low, at, name);
        if (len < 0) Py_RETURN_NONE;
        t = &l->domains;
    }
    if (t->finder == NULL) Py_RETURN_NONE;

    PyObject *item = PyUnicode_FromStringAndSize(name, len), *result = NULL, *matched = NULL;
    if (item == NULL) goto fail;
    PyObject *listed = PyObject_CallFunctionObjArgs(l->match_domain, item, args[1], NULL);
    if (listed == NULL) goto fail;
    int on_a_list = listed != Py_None;
    Py_DECREF(listed);
    if (on_a_list) goto pass;  /* the lists decide: the Python path answers */

    PyObject *best = NULL;  /* borrowed, from the outcomes dict */
    if (ip >= 0) {
        unsigned char key[4] = {(unsigned char)(ip >> 24), (unsigned char)(ip >> 16), (unsigned char)(ip >> 8),
                                (unsigned char)ip};
        Py_ssize_t row = finder_api->find(t->finder, key, 4);
        if (row == -2) goto pass;
        if (row >= 0) {
            long prefix = col_value(t, 3, row, 1);
            if (prefix < 0 || prefix > 32 || (best = hit_outcome(l, t, row)) == NULL) goto pass;
            if (prefix == 32) {
                matched = Py_NewRef(item);
            } else {
                uint32_t net = prefix ? (uint32_t)ip & ~(uint32_t)0 << (32 - prefix) : 0;
                matched = PyUnicode_FromFormat("%u.%u.%u.%u/%ld", net >> 24, net >> 16 & 255, net >> 8 & 255,
                                               net & 255, prefix);
                if (matched == NULL) goto fail;
            }
        }
    } else {  /* the name, then each parent of two labels or more (urls.domain_suffixes) */
        long best_severity = -1;
        Py_ssize_t best_at = 0;
        for (Py_ssize_t s = 0; s < len;) {
            unsigned char digest[32];
            sha256((const unsigned char *)name + s, (size_t)(len - s), digest);
            Py_ssize_t row = finder_api->find(t->finder, digest, 32);
            if (row == -2) goto pass;
            if (row >= 0) {
                PyObject *o = hit_outcome(l, t, row);
                if (o == NULL) goto pass;
                long severity = PyLong_AsLong(PyTuple_GET_ITEM(o, 0));
                if (severity == -1 && PyErr_Occurred()) goto fail;
                if (best == NULL || severity > best_severity) {  /* longer first: ties keep it */
                    best = o;
                    best_severity = severity;
                    best_at = s;
                }
            }
            const char *dot = memchr(name + s, '.', (size_t)(len - s));
            if (dot == NULL || memchr(dot + 1, '.', (size_t)(name + len - dot - 1)) == NULL) break;
            s = dot + 1 - name;
        }
        if (best != NULL) {
            matched = PyUnicode_FromStringAndSize(name + best_at, len - best_at);
            if (matched == NULL) goto fail;
        }
    }
    PyObject *code, *answer, *source;
    if (best != NULL) {
        code = PyTuple_GET_ITEM(best, 1);
        answer = PyTuple_GET_ITEM(best, 2);
        source = l->pattern;
    } else {
        if (l->miss == Py_None) goto pass;  /* the cloud or an upstream zone asks: Python */
        Py_ssize_t cached = PyObject_Size(l->cache);
        if (cached < 0) goto fail;
        if (cached) goto pass;  /* maybe a cached answer: Python */
        code = PyTuple_GET_ITEM(l->miss, 0);
        answer = PyTuple_GET_ITEM(l->miss, 1);
        source = PyTuple_GET_ITEM(l->miss, 2);
        matched = Py_NewRef(Py_None);  /* none: the answer's own (None) stands */
    }
    int is_listed = PyBytes_Check(code) && PyBytes_GET_SIZE(code) == 4;

    /* the response: the question as sent, then the A record or the zone's SOA */
    unsigned char out[MAX_PACKET + 128];
    Py_ssize_t o = 0;
    unsigned flags = 0x8000 | 0x0400 | (is_listed ? 0 : 3) | (p[2] & 1) << 8 | (p[3] & 0x10);
    unsigned char head[12] = {p[0], p[1], (unsigned char)(flags >> 8), (unsigned char)flags, 0, 1,
                              0, (unsigned char)is_listed, 0, (unsigned char)!is_listed, 0, opt != NULL};
    memcpy(out, head, 12);
    o = 12;
    memcpy(out + o, p + 12, (size_t)(qend - 12));
    o += qend - 12;
    if (is_listed) {
        memcpy(out + o, "\xc0\x0c\x00\x01", 4);
        memcpy(out + o + 4, l->a_fixed, 8);
        memcpy(out + o + 12, PyBytes_AS_STRING(code), 4);
        o += 16;
    } else {
        unsigned char apex[2] = {(unsigned char)(0xC0 | at >> 8), (unsigned char)at};
        memcpy(out + o, apex, 2);
        memcpy(out + o + 2, l->soa_fixed, 10);
        memcpy(out + o + 12, apex, 2);
        memcpy(out + o + 14, HOSTMASTER, 11);
        memcpy(out + o + 25, apex, 2);
        memcpy(out + o + 27, l->timers, 20);
        o += 47;
    }
    if (opt != NULL) {
        memcpy(out + o, opt, 11);
        o += 11;
    }
    PyObject *reply = PyBytes_FromStringAndSize((const char *)out, o);
    if (reply == NULL) goto fail;
    result = PyTuple_Pack(7, reply, l->zkind[z], is_listed ? l->noerror : l->nxdomain, source, item, answer,
                          matched);
    Py_DECREF(reply);
    Py_XDECREF(item);
    Py_XDECREF(matched);
    return result;

fail:  /* an error in a callback or out of memory: the Python path meets it too, and says */
    PyErr_Clear();
pass:
    Py_XDECREF(item);
    Py_XDECREF(matched);
    Py_RETURN_NONE;
}

/* ------------------------------------------------------------------ making one */

static int fixed(PyObject *o, unsigned char *into, Py_ssize_t size, const char *what) {
    if (!PyBytes_Check(o) || PyBytes_GET_SIZE(o) != size) {
        PyErr_Format(PyExc_ValueError, "Lane: %s must be %zd bytes", what, size);
        return -1;
    }
    memcpy(into, PyBytes_AS_STRING(o), (size_t)size);
    return 0;
}

/* a rated table: None, or (finder, base rows, rating, score, category, prefix, rating
   added, score added, category added), columns bytes-like or None */
static int rated(Rated *t, PyObject *spec) {
    if (spec == Py_None) return 0;
    if (!PyTuple_Check(spec) || PyTuple_GET_SIZE(spec) != 9 || !finder_api->is_finder(PyTuple_GET_ITEM(spec, 0))) {
        PyErr_SetString(PyExc_ValueError, "Lane: a table is (finder, rows, 7 columns)");
        return -1;
    }
    t->base = PyLong_AsSsize_t(PyTuple_GET_ITEM(spec, 1));
    if (t->base < 0 && PyErr_Occurred()) return -1;
    for (int i = 0; i < 7; i++) {
        PyObject *c = PyTuple_GET_ITEM(spec, 2 + i);
        int side = i >= 4, col = i >= 4 ? i - 4 : i;
        if (c == Py_None) continue;
        if (PyObject_GetBuffer(c, &t->col[side][col], PyBUF_SIMPLE) < 0) return -1;
        t->held[side][col] = 1;
    }
    t->finder = Py_NewRef(PyTuple_GET_ITEM(spec, 0));
    return 0;
}

static void unrated(Rated *t) {
    for (int side = 0; side < 2; side++)
        for (int c = 0; c < 4; c++)
            if (t->held[side][c]) {
                t->held[side][c] = 0;
                PyBuffer_Release(&t->col[side][c]);
            }
    Py_CLEAR(t->finder);
}

/* Lane(zones, domains, ip4, outcome, miss, match_domain, cache, a_fixed, soa_fixed, timers,
 *      opt_plain, opt_do): zones ((wire name, is_ip, kind), ...) longer first. */
static int Lane_init(Lane *l, PyObject *args, PyObject *kw) {
    PyObject *zones, *domains, *ip4, *outcome, *miss, *match, *cache, *a, *soa, *timers, *plain, *dobit;
    if (kw != NULL && PyDict_GET_SIZE(kw)) {
        PyErr_SetString(PyExc_TypeError, "Lane: positional arguments only");
        return -1;
    }
    if (!PyArg_ParseTuple(args, "O!OOOOOOOOOOO:Lane", &PyTuple_Type, &zones, &domains, &ip4, &outcome, &miss,
                          &match, &cache, &a, &soa, &timers, &plain, &dobit))
        return -1;
    if (l->outcomes != NULL) {
        PyErr_SetString(PyExc_RuntimeError, "Lane: made once");
        return -1;
    }
    if (PyTuple_GET_SIZE(zones) > MAX_ZONES) {
        PyErr_SetString(PyExc_ValueError, "Lane: two zones at most");
        return -1;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(zones); i++) {
        PyObject *zone = PyTuple_GET_ITEM(zones, i);
        PyObject *wire;
        int is_ip;
        PyObject *kind;
        if (!PyArg_ParseTuple(zone, "SpU", &wire, &is_ip, &kind)) return -1;
        Py_ssize_t zlen = PyBytes_GET_SIZE(wire);
        if (zlen < 2 || zlen > 255) {
            PyErr_SetString(PyExc_ValueError, "Lane: a zone's wire name is 2 to 255 bytes");
            return -1;
        }
        memcpy(l->zwire[i], PyBytes_AS_STRING(wire), (size_t)zlen);
        l->zlen[i] = zlen;
        l->zip[i] = is_ip;
        l->zkind[i] = Py_NewRef(kind);
        l->nzones = (int)i + 1;
    }
    if (miss != Py_None && (!PyTuple_Check(miss) || PyTuple_GET_SIZE(miss) != 3)) {
        PyErr_SetString(PyExc_ValueError, "Lane: miss is None or (code, answer, source)");
        return -1;
    }
    if (rated(&l->domains, domains) < 0 || rated(&l->ip4, ip4) < 0) return -1;
    if (fixed(a, l->a_fixed, 8, "a_fixed") < 0 || fixed(soa, l->soa_fixed, 10, "soa_fixed") < 0
            || fixed(timers, l->timers, 20, "timers") < 0 || fixed(plain, l->opt_plain, 11, "opt_plain") < 0
            || fixed(dobit, l->opt_do, 11, "opt_do") < 0)
        return -1;
    l->outcomes = PyDict_New();
    l->pattern = PyUnicode_FromString("pattern");
    l->noerror = PyUnicode_FromString("NOERROR");
    l->nxdomain = PyUnicode_FromString("NXDOMAIN");
    if (!l->outcomes || !l->pattern || !l->noerror || !l->nxdomain) return -1;
    l->outcome = Py_NewRef(outcome);
    l->miss = Py_NewRef(miss);
    l->match_domain = Py_NewRef(match);
    l->cache = Py_NewRef(cache);
    return 0;
}

static int Lane_traverse(Lane *l, visitproc visit, void *arg) {
    Py_VISIT(l->outcome);
    Py_VISIT(l->outcomes);
    Py_VISIT(l->miss);
    Py_VISIT(l->match_domain);
    Py_VISIT(l->cache);
    Py_VISIT(l->domains.finder);
    Py_VISIT(l->ip4.finder);
    return 0;
}

static int Lane_clear(Lane *l) {
    Py_CLEAR(l->outcome);
    Py_CLEAR(l->outcomes);
    Py_CLEAR(l->miss);
    Py_CLEAR(l->match_domain);
    Py_CLEAR(l->cache);
    return 0;
}

static void Lane_dealloc(Lane *l) {
    PyObject_GC_UnTrack(l);
    Lane_clear(l);
    unrated(&l->domains);
    unrated(&l->ip4);
    for (int i = 0; i < l->nzones; i++) Py_CLEAR(l->zkind[i]);
    Py_CLEAR(l->pattern);
    Py_CLEAR(l->noerror);
    Py_CLEAR(l->nxdomain);
    Py_TYPE(l)->tp_free((PyObject *)l);
}

static PyObject *sha256_py(PyObject *mod, PyObject *arg) {
    Py_buffer b;
    if (PyObject_GetBuffer(arg, &b, PyBUF_SIMPLE) < 0) return NULL;
    unsigned char out[32];
    sha256(b.buf, (size_t)b.len, out);
    PyBuffer_Release(&b);
    return PyBytes_FromStringAndSize((const char *)out, 32);
}

static PyMethodDef Lane_methods[] = {
    {"answer", (PyCFunction)(void (*)(void))Lane_answer, METH_FASTCALL,
     "answer(packet, client) -> (response, zone, rcode, source, item, answer, matched) or None"},
    {NULL},
};

static PyTypeObject LaneType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "proxy.dns._lane.Lane",
    .tp_basicsize = sizeof(Lane),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "The DNS door's common answers, compiled (see the module's source for why).",
    .tp_new = PyType_GenericNew,
    .tp_init = (initproc)Lane_init,
    .tp_dealloc = (destructor)Lane_dealloc,
    .tp_traverse = (traverseproc)Lane_traverse,
    .tp_clear = (inquiry)Lane_clear,
    .tp_methods = Lane_methods,
};

static PyMethodDef module_methods[] = {
    {"sha256", sha256_py, METH_O, "sha256(data) -> digest (the lane's own, for its tests)"},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "_lane", "The DNS door's common answers, compiled (see _lane.c).", -1,
    module_methods,
};

PyMODINIT_FUNC PyInit__lane(void) {
    PyObject *tables = PyImport_ImportModule("proxy.patterns.tables._finder");  /* the capsule's module */
    if (tables == NULL) return NULL;
    Py_DECREF(tables);
    finder_api = PyCapsule_Import(FINDER_CAPSULE, 0);
    if (finder_api == NULL) return NULL;
    if (PyType_Ready(&LaneType) < 0) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m == NULL) return NULL;
    if (PyModule_AddObjectRef(m, "Lane", (PyObject *)&LaneType) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
