using System.Diagnostics.Metrics;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Nbd;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Topology;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>
/// The NBD instruments of the <c>ActorBlk</c> meter (issue 12 item 3, "NBD connections"), read
/// with a <see cref="MeterListener"/> as dotnet-counters reads them.
/// </summary>
public sealed class NbdMetricsSpec
{
    private sealed class Recorder : IDisposable
    {
        private readonly MeterListener _listener = new();
        private readonly List<(string Name, long Value, string Key)> _values = [];

        public Recorder()
        {
            _listener.InstrumentPublished = (instrument, listener) =>
            {
                if (instrument.Meter.Name == BlockMetrics.MeterName && instrument.Name.StartsWith("actorblk.nbd.", StringComparison.Ordinal))
                {
                    listener.EnableMeasurementEvents(instrument);
                }
            };
            _listener.SetMeasurementEventCallback<long>((instrument, value, tags, _) =>
            {
                var key = string.Empty;
                foreach (var tag in tags)
                {
                    key = tag.Value as string ?? key;
                }

                lock (_values)
                {
                    _values.Add((instrument.Name, value, key));
                }
            });
            _listener.Start();
        }

        /// <summary>The value of <paramref name="name"/> for the server endpoint or client device <paramref name="key"/>; null when not reported.</summary>
        public long? Collect(string name, string key)
        {
            lock (_values)
            {
                _values.Clear();
            }

            _listener.RecordObservableInstruments();
            lock (_values)
            {
                var hits = _values.Where(v => v.Name == name && v.Key == key).ToList();
                return hits.Count == 0 ? null : hits.Sum(v => v.Value);
            }
        }

        public void Dispose() => _listener.Dispose();
    }

    [Fact]
    public async Task Server_and_client_connections_are_reported_while_they_exist()
    {
        using var recorder = new Recorder();
        await using var fx = NbdExportFixture.Start();
        var endpoint = fx.Endpoint.ToString();
        Assert.Equal(0, recorder.Collect("actorblk.nbd.server.connections", endpoint));

        var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "nbdmetrics0", Driver = "nbd", Uri = fx.Uri("mem0"), Connections = 2, HwQueueDepth = 8 }, CpuTopology.Simulated(2));
        await device.WriteAsync(0, new byte[4096]);

        Assert.Equal(2, recorder.Collect("actorblk.nbd.client.connections", "nbdmetrics0"));
        Assert.Equal(2, recorder.Collect("actorblk.nbd.server.connections", endpoint));
        Assert.Equal(2, recorder.Collect("actorblk.nbd.server.accepted", endpoint));
        Assert.Equal(0, recorder.Collect("actorblk.nbd.server.refused", endpoint));

        // The server sends the reply before it recycles the request's slot: the client's write
        // can finish while the server still counts it in flight.
        await Condition.EventuallyAsync(() => recorder.Collect("actorblk.nbd.server.in_flight", endpoint) == 0, "the server recycled the write's slot");

        // The 4 KiB write's buffer stays with its idle slot, within the budget's keep share.
        Assert.Equal(4096, recorder.Collect("actorblk.nbd.server.buffer_memory", endpoint));
        Assert.Equal(0, recorder.Collect("actorblk.nbd.server.buffer_waits", endpoint));

        // The client device is gone: it is no longer reported, and the server sees its
        // connections close (awaited, the server drops a connection when its socket ends).
        await devices.DisposeAsync();
        Assert.Null(recorder.Collect("actorblk.nbd.client.connections", "nbdmetrics0"));
        await Condition.EventuallyAsync(() => fx.Server.ConnectionCount == 0, "the server dropped the closed connections");
        Assert.Equal(0, recorder.Collect("actorblk.nbd.server.connections", endpoint));
        Assert.Equal(2, recorder.Collect("actorblk.nbd.server.accepted", endpoint));
        Assert.Equal(0, recorder.Collect("actorblk.nbd.server.buffer_memory", endpoint));

        await fx.Server.DisposeAsync();
        Assert.Null(recorder.Collect("actorblk.nbd.server.connections", endpoint));
    }

    [Fact]
    public async Task A_server_on_a_unix_socket_is_reported_under_unix_and_its_path()
    {
        using var recorder = new Recorder();
        using var dir = new TempDirectory("nbdm");
        await using var fx = NbdExportFixture.Start(new NbdServerOptions { UnixSocket = dir.File("m.sock") });
        var endpoint = $"unix:{dir.File("m.sock")}";
        await using var devices = new RingDevices(2);
        var device = devices.Create(new DeviceOptions { Name = "nbdmetrics1", Driver = "nbd", Uri = fx.Uri("mem0"), Connections = 2, HwQueueDepth = 8 }, CpuTopology.Simulated(2));
        await device.WriteAsync(0, new byte[4096]);
        Assert.Equal(2, recorder.Collect("actorblk.nbd.server.connections", endpoint));
        Assert.Equal(2, recorder.Collect("actorblk.nbd.server.accepted", endpoint));
        Assert.Equal(0, recorder.Collect("actorblk.nbd.server.refused", endpoint));
    }
}
