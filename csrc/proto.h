/* The wire format between the Python parent, the spawn child and the
 * sandbox init.  Fixed-size records, little structure, no strings from the
 * C side: Python turns a (step, errno, index) record into an exception. */
#ifndef PYSANDBOX_PROTO_H
#define PYSANDBOX_PROTO_H

#include <stdint.h>

/* The step that failed.  Python keeps the names (pysandbox/_errors.py). */
enum ps_step {
    PS_STEP_NONE = 0,
    /* parent and spawn child (csrc/spawn.c) */
    PS_STEP_PIPE = 1,
    PS_STEP_CLONE = 2,
    PS_STEP_SETGROUPS = 3,
    PS_STEP_GID_MAP = 4,
    PS_STEP_UID_MAP = 5,
    PS_STEP_CHILD_FDS = 6,
    PS_STEP_EXEC_INIT = 7,
    PS_STEP_CGROUP_NS = 8,
    PS_STEP_DEV_NODES = 9,
    /* init, building the container (csrc/init.c) */
    PS_STEP_READ_PLAN = 10,
    PS_STEP_MAKE_PRIVATE = 11,
    PS_STEP_OPEN_SOURCE = 12,
    PS_STEP_ROOT_MOUNT = 13,
    PS_STEP_ATTACH_ROOT = 14,
    PS_STEP_RESOLVE_TARGET = 15,
    PS_STEP_CREATE_TARGET = 16,
    PS_STEP_MOUNT = 17,
    PS_STEP_SYMLINK = 18,
    PS_STEP_REMOUNT_RO = 19,
    PS_STEP_HOSTNAME = 20,
    PS_STEP_LOOPBACK = 21,
    PS_STEP_PIVOT_ROOT = 22,
    PS_STEP_TIME_NS = 23,
    PS_STEP_SIGNALS = 24,
    PS_STEP_NETNS = 25,
    PS_STEP_BOARD = 26,
    /* init and supervisor, starting a command */
    PS_STEP_FORK = 30,
    PS_STEP_STDIO = 31,
    PS_STEP_SETID = 32,
    PS_STEP_CHDIR = 33,
    PS_STEP_EXEC = 34,
    PS_STEP_RLIMIT = 35,
    PS_STEP_CAPS = 36,
    PS_STEP_SECCOMP = 37,
    PS_STEP_CGROUP = 38,
};

/* Records sent by init and by the per-run supervisors. */
enum ps_record_type {
    PS_REC_READY = 1,         /* container built; pid = init's pid inside */
    PS_REC_SETUP_FAILED = 2,  /* step, err, index (of the failing op) */
    PS_REC_SPAWNED = 3,       /* pid = command's pid inside */
    PS_REC_SPAWN_FAILED = 4,  /* step, err */
    PS_REC_EXIT = 5,          /* status (wait status), rusage */
};

struct ps_record {
    uint32_t type;
    uint32_t step;
    int32_t err;
    int32_t index;
    int64_t pid;
    int64_t status;
    int64_t utime_us;
    int64_t stime_us;
    int64_t maxrss_kb;
};

/* The plan: one message, built once per sandbox by Python.
 *   struct ps_plan_hdr; hostname (hostname_len bytes, NUL included);
 *   staging dir (staging_len, NUL included); seccomp filter (filter_len);
 *   n_ops x { struct ps_op_hdr; src; dst; data }  (each *_len counts the NUL,
 *   0 = absent). */
#define PS_PLAN_MAGIC 0x31425350u /* "PSB1" */

/* (The network and time namespaces are not plan flags: init sets them up
 * before it reads the plan, as its argv says; see init's main.) */
enum ps_plan_flags {
    PS_PLAN_CAPS = 4,       /* supervisors drop the bounding set to cap_bound */
    PS_PLAN_FILTER_IN_INIT = 8, /* init installs the filter once, after setup,
                                   the early supervisor its own copy before its
                                   go: later supervisors and the commands
                                   inherit it (a policy that leaves allowed
                                   what they do from there on) */
    PS_PLAN_NO_SPARE = 16,  /* no spare supervisor, one idle kept (a pids
                               limit: it would take a process from the
                               commands; an nproc rlimit is seen in the
                               requests, see init's max_idle) */
};

struct ps_plan_hdr {
    uint32_t magic;
    uint32_t flags;
    uint32_t n_ops;
    uint32_t hostname_len;
    uint32_t staging_len;   /* staging directory (host view) for the root */
    uint32_t filter_len;    /* seccomp filter (struct sock_filter[]), bytes */
    uint64_t cap_bound;     /* with PS_PLAN_CAPS: the commands' bounding set */
};

enum ps_op_kind {
    PS_OP_ROOT_TMPFS = 1,   /* data: tmpfs options */
    PS_OP_ROOT_OVERLAY = 2, /* src: lower dir (host path, escaped) */
    PS_OP_BIND = 3,         /* src (host path) -> dst (inside) */
    PS_OP_TMPFS = 4,        /* dst, data: options */
    PS_OP_PROC = 5,         /* dst */
    PS_OP_DEVPTS = 6,       /* dst, data: options */
    PS_OP_MKDIR = 7,        /* dst, mode */
    PS_OP_SYMLINK = 8,      /* dst, data: link text */
    PS_OP_REMOUNT_RO = 9,   /* dst: make the mount at dst read-only */
    PS_OP_MQUEUE = 10,      /* dst */
    PS_OP_BIND_SELF = 11,   /* dst: bind dst onto itself (to make it read-only) */
};

enum ps_op_flags {
    PS_F_RDONLY = 1,
    PS_F_NOSUID = 2,
    PS_F_NODEV = 4,
    PS_F_NOEXEC = 8,
    PS_F_FILE = 16,       /* the target is a file (create an empty one) */
    PS_F_OPTIONAL = 32,   /* skip the op when the source is missing */
    PS_F_NO_CREATE = 64,  /* skip the op when the target is missing */
    PS_F_DEV_NODE = 128,  /* a device node: from the parent's private copies
                           * (a detached tmpfs sent with the plan) when there
                           * are some, by the name of src's last component */
};

struct ps_op_hdr {
    uint32_t kind;
    uint32_t flags;
    uint32_t mode;
    uint32_t src_len;
    uint32_t dst_len;
    uint32_t data_len;
};

/* Requests from Python to init on the control socket. */
enum ps_request_type {
    PS_REQ_RUN = 1,     /* on the run queue; SCM_RIGHTS: record pipe, stdin, stdout,
                           stderr, then up to PS_MAX_CGROUP_FDS cgroup.procs files
                           the command joins ("0") before anything else */
    PS_REQ_SIGNAL = 2,  /* run_id, sig; flag PS_SIGNAL_TREE: kill the whole tree */
};

enum ps_run_flags {
    PS_RUN_SETID = 1,          /* uid/gid are set */
    PS_RUN_CAPS = 2,           /* keep only the capabilities in cap_keep */
    PS_RUN_NO_NEW_PRIVS = 4,   /* prctl(PR_SET_NO_NEW_PRIVS) */
    PS_SIGNAL_TREE = 8,        /* with PS_REQ_SIGNAL: SIGKILL the run's tree */
    PS_RUN_QUIET_SPAWN = 16,   /* no SPAWNED record: the EXIT record has the pid */
};

/* RUN: followed by cwd\0, argc strings, envc strings. */
struct ps_request_hdr {
    uint32_t type;
    uint32_t flags;
    uint32_t run_id;
    uint32_t sig;
    uint32_t argc;
    uint32_t envc;
    int32_t uid;
    int32_t gid;
    uint32_t n_rlimits;   /* followed first by n_rlimits x ps_rlimit */
    uint32_t reserved;
    uint64_t cap_keep;    /* bit N = capability N */
};

struct ps_rlimit {
    uint32_t resource;
    uint32_t reserved;
    uint64_t soft;
    uint64_t hard;
};

/* init's fds: the control socket (plan, signals, parent death) and the run
 * queue (run requests, read by the spare supervisor) */
#define PS_MAX_CGROUP_FDS 8
/* fds on one request: record pipe, stdin, stdout, stderr, cgroup.procs files */
#define PS_MAX_SEND_FDS (4 + PS_MAX_CGROUP_FDS)
#define PS_MAX_REQUEST (256 * 1024)   /* bytes of one run request, at most */
#define PS_CTRL_FD 3
#define PS_RUNQ_FD 4

#endif
