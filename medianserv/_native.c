/* medianserv._native: the compiled twins (see _native.h), put together as one module. */
#include "_native.h"

#include <string.h>

PyObject *line_alloc(PyTypeObject *type, Py_ssize_t Py_UNUSED(nitems)) {
    size_t size = ((size_t)type->tp_basicsize + 63) & ~(size_t)63;
    PyObject *o = aligned_alloc(64, size);
    if (!o) return PyErr_NoMemory();
    memset(o, 0, size);
    return PyObject_Init(o, type);
}

static PyMethodDef functions[] = {
    {"compact_levels", (PyCFunction)(void (*)(void))compact_levels, METH_FASTCALL,
     "compact_levels(prices, counts, prev=0): candles.compact_levels, compiled."},
    {"expand_levels", (PyCFunction)expand_levels, METH_O,
     "expand_levels(data): candles.expand_levels, compiled."},
    {"merge_levels", (PyCFunction)(void (*)(void))merge_levels, METH_FASTCALL,
     "merge_levels(older, newer) or (older, prices, counts): store.merge_levels, compiled."},
    {"candle_batch", (PyCFunction)(void (*)(void))candle_batch, METH_FASTCALL,
     "candle_batch(batch, fallback): the candle writes of a snapshot's batch "
     "(store.candle_items), fallback(state) called for a state only the Python twin takes."},
    {NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT,
    .m_name = "medianserv._native",
    .m_doc = "The compiled twins of medianserv's pure modules: Median (median.py); Lock, "
             "Index and TradePath (hotpath.py); Period, compact_levels, expand_levels (candles.py); "
             "candle_batch, merge_levels (store.py).",
    .m_size = -1,
    .m_methods = functions,
};

PyMODINIT_FUNC PyInit__native(void) {
    if (PyType_Ready(&MedianType) < 0 || PyType_Ready(&LevelsType) < 0 ||
        PyType_Ready(&PeriodType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&module);
    if (!m) return NULL;
    if (PyModule_AddObjectRef(m, "Median", (PyObject *)&MedianType) < 0 ||
        PyModule_AddObjectRef(m, "Period", (PyObject *)&PeriodType) < 0 ||
        PyModule_AddIntConstant(m, "PERIOD_PENDING", PERIOD_PENDING) < 0 || hotpath_ready(m) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
