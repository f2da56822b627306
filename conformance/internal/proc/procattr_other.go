//go:build !linux

package proc

import "os/exec"

func setProcAttr(cmd *exec.Cmd) {}
