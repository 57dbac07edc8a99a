using System.Reflection;
using ActorBlk.Hardware.Drivers.File;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Testing;
using Xunit;

namespace ActorBlk.Hardware.Tests.Drivers.File;

/// <summary>
/// <see cref="FileBlockDriver.Abandon"/> waits for an engine that a new one replaced for the same
/// hardware queue (a driver actor restarted, initialising its queue again) while it still held
/// requests: a mailbox io_uring engine whose reaper outlived the 30 s stop. Found by a review:
/// the driver kept one engine per hardware queue, so the new engine hid the old one's requests,
/// and Abandon returned while the kernel still held them. The old engine is a stand-in whose
/// outstanding count the spec sets, put where the driver keeps its engines.
/// </summary>
public sealed class FileBlockDriverRetiredEngineSpec : IDisposable
{
    private static readonly TimeSpan Liveness = TimeSpan.FromSeconds(30);

    private readonly TempDirectory _dir = new("actorblk-retired-engine");

    public void Dispose() => _dir.Dispose();

    // On the old code Abandon returns at once (it sees only the new engine) and never reads the
    // old engine's count: the first assertion fails.
    [Fact]
    public async Task Abandon_waits_for_an_engine_replaced_while_it_held_requests()
    {
        using var driver = new FileBlockDriver(
            new FileBlockOptions { Path = _dir.File("retired.img"), SizeBytes = 1 << 20, Engine = IoEngine.Psync, Direct = false },
            "retired0");
        var (queue, _) = TestQueues.Create(driver, cpus: 2, depth: 8, options: new QueueOptions { MergePolicy = MergePolicy.Off }, name: "retired0", mode: DispatchMode.Mailbox);
        var hctx = queue.HardwareContexts[0];

        var target = (FileTarget)typeof(FileBlockDriver).GetField("_target", BindingFlags.Instance | BindingFlags.NonPublic)!.GetValue(driver)!;
        var engines = (Dictionary<int, (FileEngine Engine, string Description)>)typeof(FileBlockDriver)
            .GetField("_engines", BindingFlags.Instance | BindingFlags.NonPublic)!.GetValue(driver)!;
        using var old = new HeldEngine(target, hctx);
        engines[hctx.Index] = (old, "held");

        // The queue initialised again: a new engine for the same hardware queue.
        driver.InitHardwareContext(hctx);
        try
        {
            Assert.IsType<PsyncEngine>(hctx.DriverData);

            var abandon = Task.Run(driver.Abandon);
            var first = await Task.WhenAny(abandon, old.ReadTwice).WaitAsync(Liveness);
            Assert.Same(old.ReadTwice, first);
            Assert.False(abandon.IsCompleted);

            // The kernel answered the old engine's requests.
            old.Held = 0;
            await abandon.WaitAsync(Liveness);
        }
        finally
        {
            driver.ExitHardwareContext(hctx);
        }
    }

    private sealed class HeldEngine(FileTarget target, HardwareContext hctx) : FileEngine(target, hctx)
    {
        private readonly TaskCompletionSource _readTwice = new(TaskCreationOptions.RunContinuationsAsynchronously);
        private int _held = 1;
        private int _reads;

        public override string Name => "held";

        public Task ReadTwice => _readTwice.Task;

        public int Held
        {
            set => Volatile.Write(ref _held, value);
        }

        public override int Outstanding
        {
            get
            {
                var held = Volatile.Read(ref _held);
                if (held > 0 && Interlocked.Increment(ref _reads) >= 2)
                {
                    _readTwice.TrySetResult();
                }

                return held;
            }
        }

        public override BlockStatus Queue(Request rq, bool last) => BlockStatus.NotSupported;
    }
}
