// Package runtime starts and stops the replicas placed on this node and
// reports what runs here.
//
// It defines the task model the reconcile loop drives (TaskSpec in,
// TaskStatus out) and two drivers: containerd, for OCI images, and exec,
// which runs a plain host process in its own network namespace, mount
// namespace and cgroup, as a user of its own. Tasks outlive the agent: a
// restarted agent adopts them (from containerd, or from the status files
// the exec driver keeps in its state directory) instead of restarting them.
//
// What a task may do to its neighbours is bounded: every task has a pids
// limit (DefaultPids unless its spec says otherwise) besides its cpu and
// memory limits; an exec task's /proc shows only its own processes, and
// its uid (claimed machine-wide from a range, see UIDRange) is no other
// task's; containers run with containerd's seccomp profile, no new
// privileges and no CAP_NET_RAW unless asked. Cgroups go through
// github.com/containerd/cgroups/v3 on v1 and v2 hosts alike; a host
// without the controllers a driver needs gets ErrCgroupsUnavailable from
// its constructor, naming the missing one.
//
// Every kernel object a driver creates carries the driver's namespace, an
// agent-unique prefix, so several agents on one machine never touch each
// other's tasks: network namespaces are named shoal-<namespace>-<task id>
// and cgroups live under shoal/<namespace>/<task id> in each hierarchy.
package runtime
