#!/usr/bin/python3
"""A slow disk for postrider's crash tests: a FUSE passthrough of ROOT at MOUNTPOINT whose
fsync takes DELAY seconds (a journal commit stuck behind writeback), everything else as fast
as the disk below. Loopback only in the sense that it touches nothing but its two folders.

    slowfs.py ROOT MOUNTPOINT DELAY

Prints "ready" once mounted; unmount (fusermount -u / umount) to stop it.
"""
import errno
import os
import sys
import threading
import time

from fusepy import FUSE, FuseOSError, Operations


class Slow(Operations):
    def __init__(self, root, delay):
        self.root = os.path.realpath(root)
        self.delay = delay

    def _p(self, path):
        return os.path.join(self.root, path.lstrip("/"))

    def __call__(self, op, path, *args):
        try:
            return super().__call__(op, path, *args)
        except OSError as e:
            raise FuseOSError(e.errno or errno.EIO)

    def access(self, path, mode):
        if not os.access(self._p(path), mode):
            raise FuseOSError(errno.EACCES)

    def chmod(self, path, mode):
        return os.chmod(self._p(path), mode)

    def chown(self, path, uid, gid):
        return os.lchown(self._p(path), uid, gid)

    def create(self, path, mode, fi=None):
        return os.open(self._p(path), os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)

    def flush(self, path, fh):
        return 0

    def fsync(self, path, datasync, fh):
        time.sleep(self.delay)
        if datasync:
            return os.fdatasync(fh)
        return os.fsync(fh)

    def fsyncdir(self, path, datasync, fh):
        time.sleep(self.delay)
        fd = os.open(self._p(path), os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        return 0

    def getattr(self, path, fh=None):
        st = os.lstat(self._p(path))
        return {k: getattr(st, k) for k in (
            "st_atime", "st_ctime", "st_gid", "st_mode", "st_mtime", "st_nlink", "st_size",
            "st_uid", "st_ino")}

    def link(self, target, source):
        return os.link(self._p(source), self._p(target))

    def mkdir(self, path, mode):
        return os.mkdir(self._p(path), mode)

    def mknod(self, path, mode, dev):
        return os.mknod(self._p(path), mode, dev)

    def open(self, path, flags):
        return os.open(self._p(path), flags)

    def read(self, path, size, offset, fh):
        return os.pread(fh, size, offset)

    def readdir(self, path, fh):
        return [".", ".."] + os.listdir(self._p(path))

    def readlink(self, path):
        return os.readlink(self._p(path))

    def release(self, path, fh):
        return os.close(fh)

    def rename(self, old, new):
        return os.rename(self._p(old), self._p(new))

    def rmdir(self, path):
        return os.rmdir(self._p(path))

    def statfs(self, path):
        st = os.statvfs(self._p(path))
        return {k: getattr(st, k) for k in (
            "f_bavail", "f_bfree", "f_blocks", "f_bsize", "f_favail", "f_ffree", "f_files",
            "f_flag", "f_frsize", "f_namemax")}

    def symlink(self, target, source):
        return os.symlink(source, self._p(target))

    def truncate(self, path, length, fh=None):
        if fh is not None:
            return os.ftruncate(fh, length)
        with open(self._p(path), "r+") as f:
            f.truncate(length)

    def unlink(self, path):
        return os.unlink(self._p(path))

    def utimens(self, path, times=None):
        return os.utime(self._p(path), times)

    def write(self, path, data, offset, fh):
        return os.pwrite(fh, data, offset)


def main():
    root, mountpoint, delay = sys.argv[1], sys.argv[2], float(sys.argv[3])

    def announce():
        # Ready once the mount shows up, so the test never races the mount.
        while not os.path.ismount(mountpoint):
            time.sleep(0.01)
        print("ready", flush=True)

    threading.Thread(target=announce, daemon=True).start()
    FUSE(Slow(root, delay), mountpoint, foreground=True, nothreads=False,
         default_permissions=True, allow_other=True)


if __name__ == "__main__":
    main()
