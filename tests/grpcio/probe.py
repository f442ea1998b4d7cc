#!/usr/bin/env python3
"""A CSI client in Python grpcio, with grpcio's default channel options, against a pvdir
unix socket: Probe, GetPluginInfo, CreateVolume and DeleteVolume on the local backend.

grpcio sends the socket's path as the HTTP/2 :authority, which the h2 crate under tonic
refuses; pvdir repairs it on unix sockets (src/socket/authority.rs). Run by tests/grpcio.rs:

    probe.py <repository root> <unix socket path> <volume name>

Stubs are generated from proto/csi.proto with grpcio-tools into a temporary directory, so
they always match the proto the driver was built from. Prints one line per call; exits 1 on
the first failed call, 2 on a usage or setup error.
"""

import importlib
import os
import sys
import tempfile


def stubs(repo, into):
    """Generate csi_pb2 and csi_pb2_grpc from the repository's proto into `into`."""
    from grpc_tools import protoc

    proto_dir = os.path.join(repo, "proto")
    args = [
        "protoc",
        "-I" + proto_dir,
        # The well-known types (timestamp, wrappers) that grpcio-tools ships.
        "-I" + os.path.join(os.path.dirname(protoc.__file__), "_proto"),
        "--python_out=" + into,
        "--grpc_python_out=" + into,
        os.path.join(proto_dir, "csi.proto"),
    ]
    if protoc.main(args) != 0:
        sys.exit("protoc could not compile proto/csi.proto")
    sys.path.insert(0, into)
    return importlib.import_module("csi_pb2"), importlib.import_module("csi_pb2_grpc")


def main():
    if len(sys.argv) != 4:
        print(__doc__, file=sys.stderr)
        sys.exit(2)
    repo, socket, name = sys.argv[1:]
    import grpc

    with tempfile.TemporaryDirectory(prefix="pvdir-grpcio-") as into:
        pb, rpc = stubs(repo, into)
        # Default options: no grpc.default_authority override. That is the point of the test.
        with grpc.insecure_channel("unix://" + socket) as channel:
            identity = rpc.IdentityStub(channel)
            controller = rpc.ControllerStub(channel)
            timeout = 30

            probe = identity.Probe(pb.ProbeRequest(), timeout=timeout)
            print("Probe ready=%s" % probe.ready.value, flush=True)
            info = identity.GetPluginInfo(pb.GetPluginInfoRequest(), timeout=timeout)
            print("GetPluginInfo name=%s version=%s" % (info.name, info.vendor_version), flush=True)

            capability = pb.VolumeCapability(
                mount=pb.VolumeCapability.MountVolume(),
                access_mode=pb.VolumeCapability.AccessMode(
                    mode=pb.VolumeCapability.AccessMode.SINGLE_NODE_WRITER
                ),
            )
            created = controller.CreateVolume(
                pb.CreateVolumeRequest(
                    name=name,
                    capacity_range=pb.CapacityRange(required_bytes=1 << 20),
                    volume_capabilities=[capability],
                ),
                timeout=timeout,
            )
            volume_id = created.volume.volume_id
            print("CreateVolume id=%s" % volume_id, flush=True)
            controller.DeleteVolume(pb.DeleteVolumeRequest(volume_id=volume_id), timeout=timeout)
            print("DeleteVolume id=%s" % volume_id, flush=True)


if __name__ == "__main__":
    try:
        main()
    except Exception as e:  # grpc.RpcError and anything else: one line, exit 1
        code = e.code().name if hasattr(e, "code") and callable(e.code) else type(e).__name__
        details = e.details() if hasattr(e, "details") and callable(e.details) else str(e)
        print("FAILED %s: %s" % (code, details), file=sys.stderr, flush=True)
        sys.exit(1)
