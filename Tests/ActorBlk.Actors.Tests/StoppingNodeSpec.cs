using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Drivers.Stacking;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using Akka;
using Akka.Actor;
using Xunit;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// README "Devices": once a node has begun to shut down, nothing new is made. A device created,
/// allocated, registered or given a table then fails with <see cref="BlockLayerStoppingException"/>
/// and nothing changes; before, it was made after the shutdown had listed the devices it tears
/// down, or in time for its last wave only by luck, and could outlive the teardown.
/// </summary>
public sealed class StoppingNodeSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(60);

    public StoppingNodeSpec()
        : base(Configs.Simulated)
    {
    }

    private static DeviceOptions Memory(string name) => new() { Name = name, Size = 8 << 20, MemoryBacked = true, PollQueues = 0 };

    [Fact]
    public async Task A_node_that_began_to_stop_creates_registers_and_loads_nothing()
    {
        var layer = BlockLayer.Get(Sys);
        var serving = await layer.CreateDeviceAsync(Memory("st0"));
        await layer.AllocateDeviceAsync(Memory("st1"));
        await layer.CreateStackedDeviceAsync("st2");
        var driver = new DisposeCountingDriver();
        var attempts = new TaskCompletionSource<Exception?[]>(TaskCreationOptions.RunContinuationsAsynchronously);

        // Between the shutdown's first phase (the node is stopping) and the teardown of its devices.
        var shutdown = CoordinatedShutdown.Get(Sys);
        shutdown.AddTask(CoordinatedShutdown.PhaseServiceUnbind, "spec-create-while-stopping", async () =>
        {
            attempts.SetResult(
            [
                await Refusal(() => layer.CreateDeviceAsync(Memory("st3"))),
                await Refusal(() => layer.CreateDeviceAsync(Memory("st4"), driver)),
                await Refusal(() => layer.AllocateDeviceAsync(Memory("st5"))),
                await Refusal(() => layer.RegisterDeviceAsync("st1")),
                await Refusal(() => layer.CreateStackedDeviceAsync("st6")),
                await Refusal(() => layer.LoadTableAsync("st2", StackTable.Linear("st0"))),
            ]);
            return Done.Instance;
        });
        await shutdown.Run(CoordinatedShutdown.ClrExitReason.Instance).WaitAsync(Generous);

        var refusals = await attempts.Task.WaitAsync(Generous);
        var names = new[] { "st3", "st4", "st5", "st1", "st6", "st2" };
        for (var i = 0; i < names.Length; i++)
        {
            var refused = Assert.IsType<BlockLayerStoppingException>(refusals[i]);
            Assert.Equal(names[i], refused.Device);
            Assert.Contains("shutting down", refused.Message, StringComparison.Ordinal);
            Assert.Equal(layer.Stopping, refused.CancellationToken);
        }

        // The driver handed over was disposed at once; the devices made before are torn down and
        // nothing made during the stop is left.
        Assert.Equal(1, driver.Disposed);
        Assert.Empty(layer.Devices);
        var late = await Assert.ThrowsAsync<BlockIoException>(() => serving.ReadAsync(0, new byte[4096]).AsTask());
        Assert.Equal(BlockStatus.Offline, late.Status);
    }

    private static async Task<Exception?> Refusal(Func<Task> call)
    {
        try
        {
            await call();
            return null;
        }
#pragma warning disable CA1031 // Whatever it throws is what the spec checks.
        catch (Exception ex)
#pragma warning restore CA1031
        {
            return ex;
        }
    }

    private sealed class DisposeCountingDriver : IBlockDriver
    {
        private readonly NullBlockDriver _inner = new(new NullBlockOptions { SizeBytes = 8 << 20, MemoryBacked = true });

        public int Disposed;

        public string Kind => _inner.Kind;

        public QueueLimits Limits => _inner.Limits;

        public DriverFeatures Features => _inner.Features;

        public BlockStatus QueueRq(HardwareContext hctx, Request request, bool last) => _inner.QueueRq(hctx, request, last);

        public TimeoutAction Timeout(Request request) => _inner.Timeout(request);

        public void Dispose()
        {
            Interlocked.Increment(ref Disposed);
            _inner.Dispose();
        }
    }
}
