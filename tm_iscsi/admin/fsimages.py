"""`tm-iscsi image extract` and `image overlay`: a directory read out of an image, or written
into a new image, offline, without booting anything.

Extract streams a tar.gz of the directory from the storage node (the node helper reads it from a
thin snapshot of the image, so the image is never mounted). Overlay first makes a new image in
oned, a clone of the original (oned runs the datastore's clone: a thin snapshot, O(1)), then
writes the directory or archive into that image's filesystem: an image VMs use is never written.
If the write fails, the new image is deleted again."""
import os
import shutil
import tarfile
import tempfile
import threading
import time

from .. import naming, protocol
from ..errors import DriverError
from ..one.errors import OneError
from ..one.states import ImageState
from .images import _Counting, _partial, _watch, checked_dest, image_lv
from .progress import Progress


def _checked_path(path):
    try:
        return protocol.image_path(path)
    except ValueError as err:
        raise DriverError(str(err))


def extract(cloud, image_id, path, dest, partition=0, force=False, out=None):
    inner = _checked_path(path)
    dest = checked_dest(dest, force, " (.tar.gz)")
    _image, ds, vg, lv = image_lv(cloud, image_id)
    partial = _partial(dest)
    progress = Progress(f"extracting {inner} of image {image_id}", 0, out)
    stop = threading.Event()
    try:
        with open(partial, "wb") as sink:
            watcher = threading.Thread(target=_watch, args=(sink.fileno(), progress, stop),
                                       daemon=True)
            watcher.start()
            try:
                cloud.node(ds.storage_host).stream_out(
                    "image-extract", "--vg", vg, "--lv", lv, "--inner", inner, "--partition",
                    partition, sink=sink, timeout=cloud.settings.copy_timeout)
            finally:
                stop.set()
                watcher.join()
        size = os.path.getsize(partial)
        progress.finish(size)
        os.replace(partial, dest)
    finally:
        if os.path.exists(partial):
            os.unlink(partial)
    return {"image": int(image_id), "path": inner, "file": dest, "bytes": size}


def _archive(source, workdir):
    """A tar.gz to send: the file itself, or the directory packed (its content under '.')."""
    if os.path.isdir(source):
        packed = os.path.join(workdir, "overlay.tar.gz")
        with tarfile.open(packed, "w:gz") as tar:
            for name in sorted(os.listdir(source)):
                tar.add(os.path.join(source, name), arcname=name)
        return packed
    if not os.path.isfile(source):
        raise DriverError(f"{source}: no such directory or .tar.gz file")
    try:
        with tarfile.open(source, "r:gz") as tar:
            tar.next()
    except (tarfile.TarError, OSError, EOFError) as err:
        raise DriverError(f"{source} is not a tar.gz archive ({err}): give a directory or a "
                          ".tar.gz")
    return source


def _wait_ready(cloud, image_id, timeout, poll, sleep, clock):
    deadline = clock() + timeout
    while True:
        image = cloud.one.image_info(image_id)
        if image.state in (ImageState.READY,):
            return image
        if image.state == ImageState.ERROR:
            raise DriverError(f"oned could not make image {image_id}: "
                              f"{image.error or 'see /var/log/one/oned.log'}")
        if clock() > deadline:
            raise DriverError(f"image {image_id} is still {image.state.name} after {timeout}s")
        sleep(poll)


def overlay(cloud, image_id, source, at, name, partition=0, timeout=3600, poll=2.0,
            sleep=time.sleep, clock=time.monotonic, out=None):
    inner = _checked_path(at)
    if not name or not name.isprintable() or len(name) > 128:
        raise DriverError("--as NAME: the new image's name (printable, at most 128 characters)")
    original, ds, _vg, _lv = image_lv(cloud, image_id)
    workdir = tempfile.mkdtemp(prefix="tm-iscsi-overlay-")
    try:
        archive = _archive(source, workdir)
        try:
            new_id = cloud.one.image_clone(image_id, name, original.datastore_id)
        except OneError as err:
            raise DriverError(f"oned refused the new image {name!r}: {err}")
        try:
            image = _wait_ready(cloud, new_id, timeout, poll, sleep, clock)
            try:
                vg, lv = naming.parse_source(image.require_source())
            except ValueError as err:
                raise DriverError(f"image {new_id}: {err}")
            size = os.path.getsize(archive)
            progress = Progress(f"writing {os.path.basename(source.rstrip('/'))} into image "
                                f"{new_id} at {inner}", size, out)
            with open(archive, "rb") as f:
                counting = _Counting(f, progress)
                done = cloud.node(ds.storage_host).call(
                    "image-overlay", "--vg", vg, "--lv", lv, "--at", inner, "--partition",
                    partition, stdin=counting, timeout=cloud.settings.copy_timeout)
            progress.finish(size)
        except (DriverError, OneError) as err:
            _delete_quietly(cloud, new_id)
            raise DriverError(f"{err} (the new image {new_id} was deleted)")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    return {"image": new_id, "name": name, "from": int(image_id), "at": inner,
            "fs": done.get("fs"), "files": done.get("files"), "bytes": done.get("bytes")}


def _delete_quietly(cloud, image_id):
    try:
        cloud.one.image_delete(image_id)
    except OneError:
        pass
