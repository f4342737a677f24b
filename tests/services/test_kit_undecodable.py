"""A request whose bytes do not parse is the caller's mistake (INVALID_ARGUMENT), not the
service's failure: Envoy's transcoder builds such bytes from some JSON it does not refuse
(an object as a map<string, string> value), and schemathesis found them as 500s over REST."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import empty_pb2
from neural.v1 import tracker_pb2
from service_kit.interceptors import Interceptor

pytestmark = pytest.mark.unit

# SetTagsRequest field 2 (tags, length-delimited) claiming 100 bytes that never come.
CORRUPT = b"\x12\x64\x0a"
GOOD = tracker_pb2.SetTagsRequest(run_id="r", tags={"k": "v"}).SerializeToString()


async def _set_tags(request: tracker_pb2.SetTagsRequest, context: object) -> empty_pb2.Empty:
    return empty_pb2.Empty()


async def _stream(
    requests: AsyncIterator[tracker_pb2.SetTagsRequest], context: object
) -> empty_pb2.Empty:
    async for _ in requests:
        pass
    return empty_pb2.Empty()


@pytest.fixture
async def channel() -> AsyncIterator[grpc.aio.Channel]:
    server = grpc.aio.server(interceptors=[Interceptor("test", {}, auth_disabled=True)])
    handlers = {
        "SetTags": grpc.unary_unary_rpc_method_handler(
            _set_tags,
            request_deserializer=tracker_pb2.SetTagsRequest.FromString,
            response_serializer=empty_pb2.Empty.SerializeToString,
        ),
        "StreamTags": grpc.stream_unary_rpc_method_handler(
            _stream,
            request_deserializer=tracker_pb2.SetTagsRequest.FromString,
            response_serializer=empty_pb2.Empty.SerializeToString,
        ),
    }
    server.add_generic_rpc_handlers(
        [grpc.method_handlers_generic_handler("neural.v1.TestService", handlers)]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as chan:
        yield chan
    await server.stop(None)


async def test_undecodable_unary_request_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    call = channel.unary_unary("/neural.v1.TestService/SetTags")
    assert await call(GOOD) == b""
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(CORRUPT)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "not a valid message" in (caught.value.details() or "")


async def test_undecodable_stream_message_is_invalid_argument(channel: grpc.aio.Channel) -> None:
    call = channel.stream_unary("/neural.v1.TestService/StreamTags")

    async def messages() -> AsyncIterator[bytes]:
        yield GOOD
        yield CORRUPT

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call(messages())
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message 2 of the stream" in (caught.value.details() or "")
