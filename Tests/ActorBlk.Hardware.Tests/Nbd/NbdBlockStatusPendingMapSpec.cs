using System.Buffers.Binary;
using System.Net;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// A block status request whose device's map asks over the network (a re-export of an NBD client
/// device, a mirror with remote legs) waits for the answer before its reply is queued. When the
/// connection ends while it waits (the client hangs up, the server stops, the device is removed),
/// the question is given up through the token the connection passes to
/// <see cref="IAllocationMap.GetExtentAsync"/>, the range is answered as data, and the connection
/// ends at once. Before, nothing cancelled the question when the reader ended: the connection, and
/// the server's stop or the device's removal waiting on it, waited for the remote answer (up to the
/// NBD client's 30 s timeout; here, whose map never answers, for ever).
/// </summary>
public sealed class NbdBlockStatusPendingMapSpec : IAsyncLifetime
{
    private const long Size = 1 << 20;

    // Only a liveness bound: the connection ends at once, the old code never (this map never answers).
    private static readonly TimeSpan Promptly = TimeSpan.FromSeconds(60);

    private readonly SilentMap _map = new();
    private BlockDevice? _device;
    private NbdServer? _server;

    public Task InitializeAsync()
    {
        _device = BioDevices.Create("remote0", _map);

        // A grace far longer than the bound: the stop's hard close after it must not be what ends the wait.
        _server = NbdServer.Start(new NbdDeviceList([_device]), new NbdServerOptions
        {
            Listen = new IPEndPoint(IPAddress.Loopback, 0),
            ShutdownGrace = TimeSpan.FromMinutes(10),
        });
        return Task.CompletedTask;
    }

    public async Task DisposeAsync()
    {
        if (_server is not null)
        {
            // A connection left waiting (a failure) is closed hard, or the stop would wait out its grace.
            foreach (var connection in _server.Connections)
            {
                connection.Abort();
            }

            await _server.DisposeAsync();
        }

        if (_device is not null)
        {
            await _device.DisposeAsync();
        }
    }

    [Theory]
    [InlineData("the client hangs up")]
    [InlineData("the client sends NBD_CMD_DISC")]
    [InlineData("the server stops")]
    [InlineData("the device is removed")]
    public async Task A_block_status_waiting_for_a_remote_map_ends_with_its_connection(string how)
    {
        var server = _server!;
        var (client, _, _) = await RawNbdClient.OpenAsync(server.LocalEndPoint, "remote0", structured: true, allocation: true);
        await using var _ = client;
        await client.SendRequestAsync(NbdCommand.BlockStatus, 1, 4096, 64 << 10, NbdCommandFlags.ReqOne);
        var question = await _map.Asked.Task.WaitAsync(Condition.Timeout);
        var connection = server.Connections.Single();
        Assert.False(question.IsCancellationRequested);

        Task ended;
        switch (how)
        {
            case "the client hangs up":
                client.Vanish();
                ended = connection.Completion;
                break;
            case "the client sends NBD_CMD_DISC":
                await client.SendRequestAsync(NbdCommand.Disconnect, 2, 0, 0);
                Assert.Equal([(64L << 10, 0u)], await StatusAsync(client, 1));
                ended = connection.Completion;
                break;
            case "the server stops":
                ended = server.DisposeAsync().AsTask();
                Assert.Equal([(64L << 10, 0u)], await StatusAsync(client, 1)); // answered as data
                Assert.True(await client.ClosedByServerAsync());
                await client.DisposeAsync(); // the graceful close waits for the client's end
                break;
            default:
                Assert.Equal(1, server.CloseConnectionsOf(_device!));
                Assert.Equal([(64L << 10, 0u)], await StatusAsync(client, 1));
                Assert.True(await client.ClosedByServerAsync());
                await client.DisposeAsync();
                ended = connection.Completion;
                break;
        }

        await ended.WaitAsync(Promptly);
        Assert.True(question.IsCancellationRequested);
        Assert.Equal(0, server.ConnectionCount);
    }

    private static async Task<(long Length, uint Flags)[]> StatusAsync(RawNbdClient client, ulong cookie)
    {
        var chunk = await client.ReadChunkAsync();
        Assert.Equal((NbdChunkType.BlockStatus, cookie), (chunk.Type, chunk.Cookie));
        return [.. Enumerable.Range(0, (chunk.Data.Length - 4) / 8).Select(i =>
            ((long)BinaryPrimitives.ReadUInt32BigEndian(chunk.Data.AsSpan(4 + (8 * i))), BinaryPrimitives.ReadUInt32BigEndian(chunk.Data.AsSpan(8 + (8 * i)))))];
    }

    // A bio-based device whose map asks "over the network" and never hears back: a question ends
    // only when its token is cancelled, with "cannot tell" (null), as the NBD client's map does.
    private sealed class SilentMap : IBioDriver, IAllocationMap
    {
        public TaskCompletionSource<CancellationToken> Asked { get; } = new(TaskCreationOptions.RunContinuationsAsynchronously);

        public QueueLimits Limits { get; } = new() { CapacitySectors = Size >> 9, LogicalBlockSize = 4096, PhysicalBlockSize = 4096 };

        public string Description => "a device whose map never answers";

        public void SubmitBio(RequestQueue queue, Bio bio) => queue.EndBio(bio, BlockStatus.Ok);

        public bool TryGetExtent(long offset, long maxLength, out long length, out bool allocated)
        {
            (length, allocated) = (0, true);
            return false;
        }

        public async ValueTask<AllocationExtent?> GetExtentAsync(long offset, long maxLength, CancellationToken cancellationToken = default)
        {
            Asked.TrySetResult(cancellationToken);
            try
            {
                await Task.Delay(Timeout.Infinite, cancellationToken);
            }
            catch (OperationCanceledException)
            {
            }

            return null;
        }

        public void Detach(RequestQueue queue)
        {
        }

        public void Dispose()
        {
        }
    }
}
