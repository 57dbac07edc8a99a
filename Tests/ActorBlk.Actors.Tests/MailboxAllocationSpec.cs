using ActorBlk.Actors.Tests.Support;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Testing;
using Xunit;
using Xunit.Abstractions;
using static ActorBlk.Testing.AllocationMeter;

namespace ActorBlk.Actors.Tests;

/// <summary>Allocation measurements read a process-wide counter: nothing else may run meanwhile.</summary>
[CollectionDefinition(Name, DisableParallelization = true)]
public sealed class MailboxAllocationCollection
{
    public const string Name = "mailbox-allocation";
}

/// <summary>
/// Mailbox dispatch allocates nothing per I/O in steady state: the bio is the message to the
/// software-context actor, staging is a publish to the hardware queue's ring, a batch costs one
/// Run message (a shared instance), and the envelope is a struct stored in the actor mailbox's
/// queue segment, which is reused while the mailbox does not fill it.
/// </summary>
[Collection(MailboxAllocationCollection.Name)]
public sealed class MailboxAllocationSpec : Akka.TestKit.Xunit2.TestKit
{
    private const int Ios = 12_500;

    private readonly ITestOutputHelper _output;

    public MailboxAllocationSpec(ITestOutputHelper output)
        : base(Configs.Simulated, output: output)
    {
        _output = output;
    }

    [Theory]
    [InlineData(IrqMode.None)]
    [InlineData(IrqMode.SoftIrq)]
    [InlineData(IrqMode.Timer)] // completions fired by the arming CPU's mailbox thread (CpuTimerHost)
    public async Task Awaited_reads_and_writes_allocate_no_object_per_io(IrqMode irqmode)
    {
        var device = await BlockLayer.Get(Sys).CreateDeviceAsync(new DeviceOptions
        {
            Name = $"alloc{(int)irqmode}", Size = 64 << 20, IrqMode = irqmode, MemoryBacked = true, Dispatch = DispatchMode.Mailbox,
            CompletionNsec = 1000, // the timer case: 1 µs per completion keeps the 132,500 I/Os short
        });

        // An awaited I/O that never completes fails the spec with the runtime's state instead of
        // hanging the run. (Starved of CPU at load 25-50, the spec takes up to 21 minutes and was
        // twice stopped as hung; its dump showed the Run in the pinned driver actor's mailbox, one
        // step from being taken: slow, not lost. See README, "A stall that was not a hang".)
        var runtime = (MailboxRuntime)device.Queue.Runtime;
        var (once, twice) = await StallWatch.RunAsync(
            async () =>
            {
                // Warm-up: JIT tiers, pools, mailbox segments.
                await RunIos(device, 20_000);

                // The least of three runs: the runtime's and the actor system's background work
                // allocate now and then, whereas an allocation per I/O shows in every run.
                return (await LeastOf(3, () => Measure(device, Ios)), await LeastOf(3, () => Measure(device, 2 * Ios)));
            },
            () => IosStarted,
            TimeSpan.FromMinutes(2),
            () => $"{runtime.Describe()}{Environment.NewLine}{string.Join(Environment.NewLine, device.Queue.HardwareContexts.Select(h => $"hctx {h.Index}: has work {h.HasWork}, stopped {h.IsStopped}, {h.Tags.InUse} tag(s) in use"))}; quiesced {device.Queue.IsQuiesced}, frozen {device.Queue.Usage.IsFrozen}, {device.Queue.InFlightCount} in flight");
        // The stall report itself works (it is read only when a run stalls); a memory-backed
        // device's driver is a blocking one, whose actor has a thread of its own.
        var report = runtime.Describe();
        Assert.Contains("hctx 0: Run on its way", report, StringComparison.Ordinal);
        Assert.Contains($"on {ActorBlkSettings.BlockingDriverDispatcher}", report, StringComparison.Ordinal);
        var perIo = (twice - once) / (double)Ios;
        _output.WriteLine($"irqmode {irqmode}: {once} bytes for {Ios} I/Os, {twice} for {2 * Ios}: {perIo:0.0} bytes per I/O");

        // Doubling the I/O count must not double what is allocated: a message wrapper (24 bytes or
        // more) per I/O would add 300 KB or more here. The bounds leave room for what the runtime
        // and other actor systems still shutting down allocate now and then on a loaded machine
        // (CI saw 20 KB in a run): 128 KiB is about 10 bytes per I/O, under half of one object.
        Assert.True(once < 128 * 1024, $"{once} bytes allocated over {Ios} I/Os");
        Assert.True(twice - once < 128 * 1024, $"{once} bytes for {Ios} I/Os but {twice} for {2 * Ios} ({perIo:0.0} bytes per I/O)");
    }
}
