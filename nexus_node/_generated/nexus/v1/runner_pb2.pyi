from nexus_node._generated.nexus.v1 import nexus_pb2 as _nexus_pb2
from google.protobuf import descriptor as _descriptor
from typing import ClassVar as _ClassVar

DESCRIPTOR: _descriptor.FileDescriptor
