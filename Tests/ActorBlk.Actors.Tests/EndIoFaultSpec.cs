using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using Xunit;
using Xunit.Abstractions;

namespace ActorBlk.Actors.Tests;

/// <summary>
/// An end_io call-back that throws is the caller's fault, not the device's. An outside audit
/// found one throw taken for a device error (the null device completes inside QueueRq, whose
/// catch unstarted a request already completed and freed: a usage count of -1 and a reset), a
/// stale request left in the merge window (a NullReferenceException in a later submission, and
/// bios that never completed), repeated throws stopping the device, and a throw on a completion
/// timer's thread aborting the process. Now every throw is caught where the bio completes: the
/// I/O counts as completed, the queue counts it (<c>EndIoFaults</c>), and nothing else changes.
/// </summary>
public abstract class EndIoFaultSpec : Akka.TestKit.Xunit2.TestKit
{
    private static readonly TimeSpan Generous = TimeSpan.FromSeconds(30);

    protected EndIoFaultSpec(DispatchMode mode, ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
        Mode = mode;
    }

    protected DispatchMode Mode { get; }

    private BlockLayer Layer => BlockLayer.Get(Sys);

    [Theory]
    [InlineData(IrqMode.None)]
    [InlineData(IrqMode.SoftIrq)]
    [InlineData(IrqMode.Timer)]
    public async Task Call_backs_that_throw_complete_once_each_and_leave_the_device_untouched(IrqMode irq)
    {
        var device = await Layer.CreateDeviceAsync(new DeviceOptions
        {
            Name = $"throw{(int)irq}",
            Dispatch = Mode,
            Size = 8 << 20,
            SubmitQueues = 2,
            HwQueueDepth = 16,
            IrqMode = irq,
            CompletionNsec = 10_000,
        });

        // 300 writes, at most 32 outstanding, over adjacent sectors (so merges happen); every
        // call-back throws. Then a QD1 chain whose call-back submits the next write and throws.
        const int Writes = 300;
        var calls = new int[Writes + 20];
        var slots = new SemaphoreSlim(32);
        var allDone = new TaskCompletionSource(TaskCreationOptions.RunContinuationsAsynchronously);
        var remaining = Writes + 20;
        void Called(int id)
        {
            Interlocked.Increment(ref calls[id]);
            if (Interlocked.Decrement(ref remaining) == 0)
            {
                allDone.TrySetResult();
            }
        }

        var buffer = new byte[4096];
        var thrower = new Thrower(id =>
        {
            Called(id);
            slots.Release();
        });
        for (var i = 0; i < Writes; i++)
        {
            await slots.WaitAsync();
            device.SubmitWithEndIo(BlockOp.Write, (i % 64) * 4096L, 4096, buffer, RequestFlags.None, i % 2, new Thrower.Token(thrower, i));
        }

        var chain = new Chain(device, buffer, Writes, Writes + 20, Called);
        chain.Next();

        var finished = await Task.WhenAny(allDone.Task, Task.Delay(Generous));
        Assert.True(finished == allDone.Task, $"{Volatile.Read(ref remaining)} call-back(s) never came");
        Assert.All(calls, c => Assert.Equal(1, c));

        // Nothing of the queue changed: no device error, no reset, no reference left, no double
        // completion. The queue counts a throw once the call-back has thrown, which is after the
        // call-back reported its call: the last count (and the last tag and usage reference, freed
        // after the bio's end_io as blk_mq_end_request does) may land just after allDone.
        await AwaitConditionAsync(
            () => Task.FromResult(device.Queue.EndIoFaults >= Writes + 20
                && device.Queue.Usage.Count == 0
                && device.Queue.HardwareContexts.All(h => h.Tags.InUse == 0)),
            Generous);
        Assert.Equal(Writes + 20, device.Queue.EndIoFaults);
        var info = await Layer.GetDeviceInfoAsync(device.Name);
        Assert.Equal(0, info.DeviceErrors);
        Assert.Equal(0, info.Resets);
        Assert.Equal(0, info.InFlight);
        Assert.Equal("online", info.Health);
        Assert.Equal(0, device.Queue.DoubleCompletions);
        Assert.All(device.Queue.HardwareContexts, h => Assert.Equal(0, h.Tags.InUse));

        // And it still works.
        await device.WriteAsync(0, buffer);
        await device.ReadAsync(0, new byte[4096]);
        await Layer.DestroyDeviceAsync(device.Name);
    }

    // An end_io that reports its call, then throws.
    private sealed class Thrower(Action<int> onCall)
    {
        public sealed class Token(Thrower owner, int id) : IBioEndIo
        {
            public void OnBioComplete(Bio bio, BlockStatus status)
            {
                owner._onCall(id);
                throw new InvalidOperationException($"call-back {id} throws");
            }
        }

        private readonly Action<int> _onCall = onCall;
    }

    // A QD1 chain: each call-back submits the next write (from the completion context), then throws.
    private sealed class Chain(IBlockDevice device, byte[] buffer, int first, int end, Action<int> onCall) : IBioEndIo
    {
        private int _next = first;

        public void Next()
        {
            var id = _next++;
            device.SubmitWithEndIo(BlockOp.Write, (id % 8) * 4096L, 4096, buffer, RequestFlags.None, 0, this);
        }

        public void OnBioComplete(Bio bio, BlockStatus status)
        {
            onCall(_next - 1);
            if (_next < end)
            {
                Next();
            }

            throw new InvalidOperationException("chain call-back throws after submitting the next write");
        }
    }
}

/// <summary>End-io faults in ring dispatch.</summary>
public sealed class RingEndIoFaultSpec(ITestOutputHelper output) : EndIoFaultSpec(DispatchMode.Ring, output);

/// <summary>End-io faults in mailbox dispatch.</summary>
public sealed class MailboxEndIoFaultSpec(ITestOutputHelper output) : EndIoFaultSpec(DispatchMode.Mailbox, output);
