using System.Net;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// Ring-dispatch devices exported by an <see cref="NbdServer"/> on 127.0.0.1 with a free port (or
/// on the options' <see cref="NbdServerOptions.UnixSocket"/> when they name one):
/// <c>mem0</c> (memory-backed, 64 MiB, 512-byte blocks, write cache, discard; the default export)
/// and <c>ro0</c> (read-only, 8 MiB).
/// </summary>
public sealed class NbdExportFixture : IAsyncDisposable
{
    public const long MemSize = 64 << 20;

    private readonly RingDevices _devices = new(2);

    private NbdExportFixture(NbdServerOptions? options, int queueDepth)
    {
        var topology = CpuTopology.Simulated(2);
        Mem = _devices.Create(new DeviceOptions { Name = "mem0", Size = MemSize, MemoryBacked = true, WriteCache = true, HwQueueDepth = queueDepth, SubmitQueues = 2 }, topology);
        ReadOnly = _devices.Create(new DeviceOptions { Name = "ro0", Size = 8 << 20, MemoryBacked = true, ReadOnly = true }, topology);
        Log = new List<string>();
        Server = NbdServer.Start(
            new NbdDeviceList([Mem, ReadOnly]),
            (options ?? new NbdServerOptions()) with { Listen = new IPEndPoint(IPAddress.Loopback, 0) },
            line =>
            {
                lock (Log)
                {
                    Log.Add(line);
                }
            });
    }

    public BlockDevice Mem { get; }

    public BlockDevice ReadOnly { get; }

    public NbdServer Server { get; }

    public List<string> Log { get; }

    public IPEndPoint Endpoint => Server.LocalEndPoint;

    /// <summary>The server's endpoint, TCP or Unix socket, for <see cref="RawNbdClient"/>.</summary>
    public EndPoint Target => Server.UnixSocket is { } socket
        ? new System.Net.Sockets.UnixDomainSocketEndPoint(socket[0] == '@' ? "\0" + socket[1..] : socket)
        : Server.LocalEndPoint;

    /// <summary>An nbd:// (or nbd+unix://) URI for libnbd tools.</summary>
    public string Uri(string export = "mem0") =>
        Server.UnixSocket is { } socket ? $"nbd+unix:///{export}?socket={socket}" : $"nbd://127.0.0.1:{Endpoint.Port}/{export}";

    public static NbdExportFixture Start(NbdServerOptions? options = null, int queueDepth = 64) => new(options, queueDepth);

    public async ValueTask DisposeAsync()
    {
        await Server.DisposeAsync();
        await _devices.DisposeAsync();
    }
}
