/* The C interface of proxy.patterns.tables._finder, for other compiled modules (the DNS
 * door's lane, proxy/dns/_lane.c): a capsule with a Finder's search, so they look a key up
 * in a table without a Python call. */
#ifndef RAMPART_FINDER_H
#define RAMPART_FINDER_H
#include <Python.h>

#define FINDER_CAPSULE "proxy.patterns.tables._finder._C_API"

typedef struct {
    /* 1 when o is a Finder */
    int (*is_finder)(PyObject *o);
    /* what Finder.lookup(key) answers, with no Python object made: the row or handle,
       -1 for none, -2 for a closed Finder or a key of another width (no exception set) */
    Py_ssize_t (*find)(PyObject *finder, const unsigned char *key, Py_ssize_t len);
} FinderAPI;

#endif
