package proc

import (
	"os/exec"
	"syscall"
)

// setProcAttr makes the kernel kill the server if the test process dies, so
// an aborted run leaves no orphans.
func setProcAttr(cmd *exec.Cmd) {
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
}
