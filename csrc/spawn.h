/* The extension's half of the engine: clone into new namespaces and exec the
 * sandbox init.  Called from Cython with the GIL released. */
#ifndef PYSANDBOX_SPAWN_H
#define PYSANDBOX_SPAWN_H

#include <sys/types.h>

struct ps_error {
    int step;   /* enum ps_step */
    int err;    /* errno */
};

struct ps_spawn_args {
    int init_fd;            /* sealed memfd holding the init program */
    char *const *argv;      /* init's argv and envp, built by the parent */
    char *const *envp;
    int ctrl_fd;            /* the child's end of the control socket */
    int runq_fd;            /* the child's end of the run queue */
    int null_fd;            /* /dev/null, becomes init's 0, 1, 2 */
    unsigned long ns_flags; /* CLONE_NEW* */
    const char *uid_map;    /* written by the parent while the child waits */
    const char *gid_map;
    int deny_setgroups;
    const int *cgroup_fds;  /* cgroup.procs files: the parent writes the pid */
    int n_cgroup_fds;
};

/* Parent side: make the sealed executable copy of `path` (once per process). */
int ps_seal_init_from_parent(const char *path, int *fd_out, struct ps_error *e);

/* Parent side: clone, write the id maps, let the child exec init, and wait
 * until the exec has happened (or failed).  Returns 0 and fills pid and pidfd,
 * or -1 and fills *e. */
int ps_spawn_init_from_parent(const struct ps_spawn_args *a, pid_t *pid_out,
                              int *pidfd_out, struct ps_error *e);

/* Parent side: a detached tmpfs (no path, nothing mounted anywhere) holding
 * private device nodes `names[i]` (char devices rdevs[i], mode 0666 as
 * modes[i]), for a sandbox whose ids map the host's root: bound from the
 * host's /dev, its root could chmod or chown the host's nodes.  Returns 0
 * and the mount's fd, or -1 and fills *e. */
int ps_dev_nodes_from_parent(const char *const *names, const unsigned long *rdevs,
                             const unsigned *modes, int n, int *fd_out, struct ps_error *e);

/* Parent side: one message with fds attached (SCM_RIGHTS), as a run request
 * is sent to the run queue.  Returns 0, or -1 with errno. */
int ps_send_with_fds(int sock, const void *buf, size_t len, const int *fds, int n_fds);

#endif
