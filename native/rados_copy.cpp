/*
 * zsagent._rados_copy: server-side copies of RADOS objects (the OSD op COPY_FROM), for an RBD-to-RBD
 * copy inside one cluster where the data never has to pass through the agent.
 *
 * Why C++: librados 16.2 exports copy_from only in its C++ API (librados::ObjectWriteOperation::copy_from);
 * its C API (rados_write_op_copy_from) came with later releases. python-rados has no binding either.
 *
 *   Cluster(conffile, name, options)       its own librados handle, connected (name: "client.<id>";
 *                                          options: extra config key -> value, e.g. the keyring, timeouts)
 *   Cluster.copy_job(src_pool, src_namespace, snap_id, src_prefix, dst_pool, dst_namespace, dst_prefix)
 *       -> CopyJob: copies "<src_prefix>.<objno:016x>" at snapshot snap_id to "<dst_prefix>.<objno:016x>"
 *   CopyJob.run(object_numbers, in_flight)  blocks (without the GIL) until every listed object is copied,
 *                                          at most in_flight copies at once; an object missing at the
 *                                          snapshot is left missing (it reads as zeros either way); the
 *                                          first failure stops the job and raises OSError(errno, text)
 *   CopyJob.stop()                          from any thread: run() submits nothing more, waits for the
 *                                          copies in flight and raises InterruptedError
 *   CopyJob.copied                          objects copied so far (missing ones included)
 *   Cluster.shutdown()                      disconnects (also when the object is collected)
 */

#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <rados/librados.hpp>

#include <atomic>
#include <cerrno>
#include <condition_variable>
#include <cstdio>
#include <cstring>
#include <deque>
#include <mutex>
#include <string>
#include <vector>

namespace {

struct ClusterObject {
    PyObject_HEAD
    librados::Rados *rados;
};

struct CopyJobObject {
    PyObject_HEAD
    PyObject *cluster;  // keeps the Cluster (and its connection) alive while the job exists
    librados::IoCtx *src;
    librados::IoCtx *dst;
    std::string *src_prefix;
    std::string *dst_prefix;
    std::atomic<bool> *stopped;
    std::atomic<unsigned long long> *copied;
};

/* The copies in flight of one run(): each completion callback counts itself out under the lock. */
struct Flight {
    std::mutex lock;
    std::condition_variable changed;
    unsigned in_flight = 0;
    int first_error = 0;                 // negative errno of the first failed copy, 0: none
    unsigned long long failed_objno = 0;
    std::deque<struct Op *> finished;    // freed by the submitting thread, never in a callback
};

struct Op {
    Flight *flight;
    unsigned long long objno;
    std::atomic<unsigned long long> *copied;
    librados::ObjectWriteOperation write;
    librados::AioCompletion *completion = nullptr;
};

void on_complete(librados::completion_t, void *arg) {
    Op *op = static_cast<Op *>(arg);
    int r = op->completion->get_return_value();
    Flight *flight = op->flight;
    std::lock_guard<std::mutex> guard(flight->lock);
    // ENOENT: the object does not exist at the snapshot; librbd reads it as zeros, so does the copy's
    // missing destination object
    if (r < 0 && r != -ENOENT && flight->first_error == 0) {
        flight->first_error = r;
        flight->failed_objno = op->objno;
    } else if (r >= 0 || r == -ENOENT) {
        op->copied->fetch_add(1);
    }
    flight->in_flight--;
    flight->finished.push_back(op);
    flight->changed.notify_all();
}

std::string object_name(const std::string &prefix, unsigned long long objno) {
    char suffix[24];
    std::snprintf(suffix, sizeof suffix, ".%016llx", objno);
    return prefix + suffix;
}

void free_finished(Flight &flight) {
    // called with flight.lock held; the callbacks of these ops have returned their use of them
    while (!flight.finished.empty()) {
        Op *op = flight.finished.front();
        flight.finished.pop_front();
        op->completion->release();
        delete op;
    }
}

PyObject *raise_errno(int negative_errno, const std::string &what) {
    int code = -negative_errno;
    std::string text = what + ": " + std::strerror(code);
    PyObject *args = Py_BuildValue("(is)", code, text.c_str());
    if (args != nullptr) {
        PyErr_SetObject(PyExc_OSError, args);
        Py_DECREF(args);
    }
    return nullptr;
}

/* ---- CopyJob ------------------------------------------------------------------------------------ */

void CopyJob_dealloc(CopyJobObject *self) {
    delete self->src;
    delete self->dst;
    delete self->src_prefix;
    delete self->dst_prefix;
    delete self->stopped;
    delete self->copied;
    Py_XDECREF(self->cluster);
    Py_TYPE(self)->tp_free(reinterpret_cast<PyObject *>(self));
}

PyObject *CopyJob_run(CopyJobObject *self, PyObject *args) {
    PyObject *numbers_arg;
    unsigned int in_flight_max;
    if (!PyArg_ParseTuple(args, "OI", &numbers_arg, &in_flight_max))
        return nullptr;
    if (in_flight_max < 1 || in_flight_max > 1024) {
        PyErr_SetString(PyExc_ValueError, "in_flight must be between 1 and 1024");
        return nullptr;
    }
    std::vector<unsigned long long> numbers;
    PyObject *sequence = PySequence_Fast(numbers_arg, "object_numbers must be a sequence of int");
    if (sequence == nullptr)
        return nullptr;
    Py_ssize_t count = PySequence_Fast_GET_SIZE(sequence);
    numbers.reserve(static_cast<size_t>(count));
    for (Py_ssize_t i = 0; i < count; i++) {
        unsigned long long n = PyLong_AsUnsignedLongLong(PySequence_Fast_GET_ITEM(sequence, i));
        if (PyErr_Occurred()) {
            Py_DECREF(sequence);
            return nullptr;
        }
        numbers.push_back(n);
    }
    Py_DECREF(sequence);

    Flight flight;
    int submit_error = 0;
    unsigned long long submit_objno = 0;
    bool interrupted = false;
    Py_BEGIN_ALLOW_THREADS
    for (unsigned long long objno : numbers) {
        {
            std::unique_lock<std::mutex> guard(flight.lock);
            flight.changed.wait(guard, [&] { return flight.in_flight < in_flight_max || flight.first_error; });
            free_finished(flight);
            if (flight.first_error)
                break;
        }
        if (self->stopped->load()) {
            interrupted = true;
            break;
        }
        Op *op = new Op;
        op->flight = &flight;
        op->objno = objno;
        op->copied = self->copied;
        op->write.copy_from(object_name(*self->src_prefix, objno), *self->src, 0,
                            LIBRADOS_OP_FLAG_FADVISE_SEQUENTIAL | LIBRADOS_OP_FLAG_FADVISE_NOCACHE);
        op->completion = librados::Rados::aio_create_completion(op, on_complete);
        {
            std::lock_guard<std::mutex> guard(flight.lock);
            flight.in_flight++;
        }
        int r = self->dst->aio_operate(object_name(*self->dst_prefix, objno), op->completion, &op->write);
        if (r < 0) {  // not submitted: its callback never comes
            std::lock_guard<std::mutex> guard(flight.lock);
            flight.in_flight--;
            op->completion->release();
            delete op;
            submit_error = r;
            submit_objno = objno;
            break;
        }
    }
    {
        std::unique_lock<std::mutex> guard(flight.lock);
        flight.changed.wait(guard, [&] { return flight.in_flight == 0; });
        free_finished(flight);
    }
    Py_END_ALLOW_THREADS

    int error = flight.first_error ? flight.first_error : submit_error;
    unsigned long long failed = flight.first_error ? flight.failed_objno : submit_objno;
    if (error)
        return raise_errno(error, "server-side copy of " + object_name(*self->src_prefix, failed) + " to " +
                                      object_name(*self->dst_prefix, failed) + " failed");
    if (interrupted) {
        PyErr_SetString(PyExc_InterruptedError, "server-side copy stopped");
        return nullptr;
    }
    Py_RETURN_NONE;
}

PyObject *CopyJob_stop(CopyJobObject *self, PyObject *) {
    self->stopped->store(true);
    Py_RETURN_NONE;
}

PyObject *CopyJob_copied(CopyJobObject *self, void *) {
    return PyLong_FromUnsignedLongLong(self->copied->load());
}

PyMethodDef CopyJob_methods[] = {
    {"run", reinterpret_cast<PyCFunction>(CopyJob_run), METH_VARARGS,
     "run(object_numbers, in_flight): copy these objects server-side; see the module docstring."},
    {"stop", reinterpret_cast<PyCFunction>(CopyJob_stop), METH_NOARGS,
     "stop(): make a running run() end after its copies in flight (InterruptedError)."},
    {nullptr, nullptr, 0, nullptr},
};

PyGetSetDef CopyJob_getset[] = {
    {"copied", reinterpret_cast<getter>(CopyJob_copied), nullptr, "objects copied so far", nullptr},
    {nullptr, nullptr, nullptr, nullptr, nullptr},
};

PyTypeObject CopyJobType = {PyVarObject_HEAD_INIT(nullptr, 0)};

/* ---- Cluster ------------------------------------------------------------------------------------ */

void Cluster_shutdown_handle(ClusterObject *self) {
    if (self->rados != nullptr) {
        librados::Rados *rados = self->rados;
        self->rados = nullptr;
        Py_BEGIN_ALLOW_THREADS
        rados->shutdown();
        delete rados;
        Py_END_ALLOW_THREADS
    }
}

int Cluster_init(ClusterObject *self, PyObject *args, PyObject *) {
    const char *conffile;
    const char *name;
    PyObject *options;
    if (!PyArg_ParseTuple(args, "zsO!", &conffile, &name, &PyDict_Type, &options))
        return -1;
    Cluster_shutdown_handle(self);
    auto *rados = new librados::Rados;
    int r = rados->init2(name, "ceph", 0);
    if (r < 0) {
        delete rados;
        raise_errno(r, std::string("librados init as ") + name);
        return -1;
    }
    r = rados->conf_read_file(conffile);
    if (r < 0) {
        rados->shutdown();
        delete rados;
        raise_errno(r, std::string("reading ") + (conffile ? conffile : "the default ceph.conf"));
        return -1;
    }
    PyObject *key, *value;
    Py_ssize_t pos = 0;
    while (PyDict_Next(options, &pos, &key, &value)) {
        const char *k = PyUnicode_AsUTF8(key);
        const char *v = k ? PyUnicode_AsUTF8(value) : nullptr;
        if (v == nullptr) {
            rados->shutdown();
            delete rados;
            return -1;
        }
        r = rados->conf_set(k, v);
        if (r < 0) {
            rados->shutdown();
            delete rados;
            raise_errno(r, std::string("setting Ceph option ") + k);  // the value may be a secret: not shown
            return -1;
        }
    }
    Py_BEGIN_ALLOW_THREADS
    r = rados->connect();
    Py_END_ALLOW_THREADS
    if (r < 0) {
        rados->shutdown();
        delete rados;
        raise_errno(r, "connecting to the Ceph cluster");
        return -1;
    }
    self->rados = rados;
    return 0;
}

void Cluster_dealloc(ClusterObject *self) {
    Cluster_shutdown_handle(self);
    Py_TYPE(self)->tp_free(reinterpret_cast<PyObject *>(self));
}

PyObject *Cluster_shutdown(ClusterObject *self, PyObject *) {
    Cluster_shutdown_handle(self);
    Py_RETURN_NONE;
}

int open_ioctx(librados::Rados *rados, const char *pool, const char *ns, librados::IoCtx *ioctx) {
    int r = rados->ioctx_create(pool, *ioctx);
    if (r < 0)
        return r;
    ioctx->set_namespace(ns);
    return 0;
}

PyObject *Cluster_copy_job(ClusterObject *self, PyObject *args) {
    const char *src_pool, *src_ns, *src_prefix, *dst_pool, *dst_ns, *dst_prefix;
    unsigned long long snap_id;
    if (!PyArg_ParseTuple(args, "ssKssss", &src_pool, &src_ns, &snap_id, &src_prefix, &dst_pool, &dst_ns,
                          &dst_prefix))
        return nullptr;
    if (self->rados == nullptr) {
        PyErr_SetString(PyExc_ValueError, "the cluster handle is shut down");
        return nullptr;
    }
    auto *src = new librados::IoCtx;
    auto *dst = new librados::IoCtx;
    int r = open_ioctx(self->rados, src_pool, src_ns, src);
    if (r < 0) {
        delete src;
        delete dst;
        return raise_errno(r, std::string("opening pool ") + src_pool);
    }
    r = open_ioctx(self->rados, dst_pool, dst_ns, dst);
    if (r < 0) {
        delete src;
        delete dst;
        return raise_errno(r, std::string("opening pool ") + dst_pool);
    }
    src->snap_set_read(snap_id);  // copy_from reads the source at its ioctx's read snapshot
    dst->set_osdmap_full_try();   // a full pool refuses the copy at once (ENOSPC) instead of waiting
    auto *job = PyObject_New(CopyJobObject, &CopyJobType);
    if (job == nullptr) {
        delete src;
        delete dst;
        return nullptr;
    }
    Py_INCREF(self);
    job->cluster = reinterpret_cast<PyObject *>(self);
    job->src = src;
    job->dst = dst;
    job->src_prefix = new std::string(src_prefix);
    job->dst_prefix = new std::string(dst_prefix);
    job->stopped = new std::atomic<bool>(false);
    job->copied = new std::atomic<unsigned long long>(0);
    return reinterpret_cast<PyObject *>(job);
}

PyMethodDef Cluster_methods[] = {
    {"copy_job", reinterpret_cast<PyCFunction>(Cluster_copy_job), METH_VARARGS,
     "copy_job(src_pool, src_namespace, snap_id, src_prefix, dst_pool, dst_namespace, dst_prefix) -> CopyJob"},
    {"shutdown", reinterpret_cast<PyCFunction>(Cluster_shutdown), METH_NOARGS, "shutdown(): disconnect."},
    {nullptr, nullptr, 0, nullptr},
};

PyTypeObject ClusterType = {PyVarObject_HEAD_INIT(nullptr, 0)};

PyModuleDef module_def = {
    PyModuleDef_HEAD_INIT, "zsagent._rados_copy",
    "Server-side copies of RADOS objects (COPY_FROM) through librados' C++ API.", -1, nullptr,
};

}  // namespace

PyMODINIT_FUNC PyInit__rados_copy(void) {
    CopyJobType.tp_name = "zsagent._rados_copy.CopyJob";
    CopyJobType.tp_basicsize = sizeof(CopyJobObject);
    CopyJobType.tp_dealloc = reinterpret_cast<destructor>(CopyJob_dealloc);
    CopyJobType.tp_flags = Py_TPFLAGS_DEFAULT;
    CopyJobType.tp_doc = "Server-side copies of one image's objects into another's (Cluster.copy_job).";
    CopyJobType.tp_methods = CopyJob_methods;
    CopyJobType.tp_getset = CopyJob_getset;

    ClusterType.tp_name = "zsagent._rados_copy.Cluster";
    ClusterType.tp_basicsize = sizeof(ClusterObject);
    ClusterType.tp_dealloc = reinterpret_cast<destructor>(Cluster_dealloc);
    ClusterType.tp_flags = Py_TPFLAGS_DEFAULT;
    ClusterType.tp_doc = "Cluster(conffile, name, options): a librados handle of its own, connected.";
    ClusterType.tp_methods = Cluster_methods;
    ClusterType.tp_init = reinterpret_cast<initproc>(Cluster_init);
    ClusterType.tp_new = PyType_GenericNew;

    if (PyType_Ready(&CopyJobType) < 0 || PyType_Ready(&ClusterType) < 0)
        return nullptr;
    PyObject *module = PyModule_Create(&module_def);
    if (module == nullptr)
        return nullptr;
    Py_INCREF(&ClusterType);
    if (PyModule_AddObject(module, "Cluster", reinterpret_cast<PyObject *>(&ClusterType)) < 0) {
        Py_DECREF(&ClusterType);
        Py_DECREF(module);
        return nullptr;
    }
    return module;
}
