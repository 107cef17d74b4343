package main

import (
	"syscall"
	"unsafe"
)

// The loop's system calls go through RawSyscall: the runtime is not told of
// them, so it never hands the loop's P to another thread during a wait and
// the loop never waits to get it back. Nothing else needs that P: the loop
// is the program's only goroutine, and the collector is off while it runs
// (see run). A signal (the runtime's preemption) ends a wait early with
// EINTR, which the loop takes as "nothing ready".

// epoll_pwait2 (Linux 5.11), the same number on every architecture.
const sysEpollPwait2 = 441

func epollPwait2(epfd int, events []syscall.EpollEvent, timeoutNs int64) (int, syscall.Errno) {
	ts := syscall.NsecToTimespec(timeoutNs)
	r, _, e := syscall.RawSyscall6(sysEpollPwait2, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(unsafe.Pointer(&ts)), 0, 0)
	return int(r), e
}

// epollWait waits up to ms milliseconds (0: not at all).
func epollWait(epfd int, events []syscall.EpollEvent, ms int) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall6(syscall.SYS_EPOLL_PWAIT, uintptr(epfd), uintptr(unsafe.Pointer(&events[0])), uintptr(len(events)), uintptr(ms), 0, 0)
	return int(r), e
}

func rawRead(fd int, p []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall(syscall.SYS_READ, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(r), e
}

func rawWrite(fd int, p []byte) (int, syscall.Errno) {
	r, _, e := syscall.RawSyscall(syscall.SYS_WRITE, uintptr(fd), uintptr(unsafe.Pointer(&p[0])), uintptr(len(p)))
	return int(r), e
}
