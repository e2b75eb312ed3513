// Package runtime starts and stops the replicas placed on this node and
// reports what runs here.
//
// It defines the task model the reconcile loop drives (TaskSpec in,
// TaskStatus out) and the exec driver, which runs a plain host process in
// its own network namespace and cgroup. Tasks outlive the agent: a restarted
// agent adopts them from the status files it keeps in its state directory
// instead of restarting them.
//
// Every kernel object a driver creates carries the driver's namespace, an
// agent-unique prefix, so several agents on one machine never touch each
// other's tasks: network namespaces are named shoal-<namespace>-<task id>
// and cgroups live under shoal/<namespace>/<task id> in each hierarchy.
package runtime
