using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Testing;

/// <summary>
/// A fake device for unit tests: records every driver call, answers QueueRq with scripted
/// statuses, and leaves accepted requests in flight until the test completes them.
/// </summary>
public sealed class ScriptedDriver : IBlockDriver
{
    private readonly object _lock = new();
    private int _reopensBegun;
    private int _reopensRunning;
    private int _resetsBegun;
    private int _resetsRunning;
    private int _pollCalls;
    private readonly TaskCompletionSource _recoveryCancelled = new(TaskCreationOptions.RunContinuationsAsynchronously);
    private readonly Queue<BlockStatus> _script = new();
    private readonly TaskCompletionSource _held = new(TaskCreationOptions.RunContinuationsAsynchronously);

    public ScriptedDriver(long capacityBytes = 1L << 30, int blockSize = 512, int maxSectors = QueueLimits.DefaultMaxSectors, bool writeCache = false, bool pollable = false,
        DriverFeatures extra = DriverFeatures.None)
    {
        Limits = new QueueLimits
        {
            LogicalBlockSize = blockSize,
            PhysicalBlockSize = blockSize,
            CapacitySectors = capacityBytes >> Bio.SectorShift,
            MaxHardwareSectors = maxSectors,
            MaxSectors = maxSectors,
            MaxDiscardSectors = 1 << 20,
            MaxWriteZeroesSectors = 1 << 20,
            VolatileWriteCache = writeCache,
        };
        Features = (pollable ? DriverFeatures.Poll : DriverFeatures.None) | extra;
    }

    public string Kind => "scripted";

    /// <summary>
    /// When set, QueueRq on hardware queue <see cref="HoldQueue"/> blocks until the event is set:
    /// the thread that dispatches it (in mailbox dispatch, that queue's driver actor) is busy.
    /// </summary>
    public ManualResetEventSlim? HoldGate { get; set; }

    /// <summary>The hardware queue whose QueueRq <see cref="HoldGate"/> holds.</summary>
    public int HoldQueue { get; set; }

    /// <summary>Completes once a QueueRq is held at <see cref="HoldGate"/>.</summary>
    public Task Held => _held.Task;

    public QueueLimits Limits { get; }

    public DriverFeatures Features { get; }

    /// <summary>Complete accepted requests inside QueueRq (like null_blk irqmode 0).</summary>
    public bool CompleteInline { get; set; }

    /// <summary>Call Start() on accepted requests (a well-behaved driver does).</summary>
    public bool StartRequests { get; set; } = true;

    /// <summary>Thrown from QueueRq when set (a device error).</summary>
    public Exception? ThrowOnQueue { get; set; }

    /// <summary>Thrown from the next QueueRq only, then cleared.</summary>
    public Exception? ThrowOnce { get; set; }

    /// <summary>Thrown from the next QueueRq after it completed the request inline (a driver bug), then cleared.</summary>
    public Exception? ThrowAfterComplete { get; set; }

    /// <summary>Reset calls (a reset abandons every request in flight).</summary>
    public int ResetCalls { get; private set; }

    /// <summary>When set, a reset waits for it before it does anything (a reconnect to a server that accepts and never answers).</summary>
    public Task? ResetGate { get; set; }

    /// <summary>Resets that have begun, counted before they wait for <see cref="ResetGate"/>.</summary>
    public int ResetsBegun => Volatile.Read(ref _resetsBegun);

    /// <summary>True when the driver was disposed while a reset ran.</summary>
    public bool DisposedDuringReset { get; private set; }

    /// <summary>
    /// When true the driver honours <see cref="CancelRecovery"/>: a reset or reopen waiting for its
    /// gate, or starting after it, gives up with a device-gone error. False: it waits for its gate
    /// whatever happens (a driver that cannot cancel).
    /// </summary>
    public bool CancelsRecovery { get; set; }

    /// <summary>Whether the block layer called <see cref="CancelRecovery"/>.</summary>
    public bool RecoveryCancelled => _recoveryCancelled.Task.IsCompleted;

    /// <summary>Reopen attempts that fail before one succeeds; -1: reopening always fails.</summary>
    public int ReopenFailures { get; set; }

    /// <summary>Reopen attempts so far.</summary>
    public int ReopenCalls { get; private set; }

    /// <summary>When set, a reopen attempt waits for it before it does anything (a server that accepts and never answers).</summary>
    public Task? ReopenGate { get; set; }

    /// <summary>Reopen attempts that have begun, counted before they wait for <see cref="ReopenGate"/>.</summary>
    public int ReopensBegun => Volatile.Read(ref _reopensBegun);

    /// <summary>True when the driver was disposed while a reopen attempt ran (a teardown that did not wait for it).</summary>
    public bool DisposedDuringReopen { get; private set; }

    public TimeoutAction TimeoutAnswer { get; set; } = TimeoutAction.ResetTimer;

    public List<(Request Request, bool Last, BlockStatus Answer)> Calls { get; } = [];

    public List<Request> InFlight { get; } = [];

    public List<Request> TimedOut { get; } = [];

    public int CommitCalls { get; private set; }

    public int InitRequestCalls { get; private set; }

    public int InitHardwareContextCalls { get; private set; }

    public List<Request> Polled { get; } = [];

    /// <summary>Answers for the next QueueRq calls, in order; Ok once the script is empty.</summary>
    public void Script(params BlockStatus[] statuses)
    {
        lock (_lock)
        {
            foreach (var s in statuses)
            {
                _script.Enqueue(s);
            }
        }
    }

    public void InitRequest(Request request, int hardwareQueue) => InitRequestCalls++;

    public void InitHardwareContext(HardwareContext hctx)
    {
        InitHardwareContextCalls++;
        if (ThrowOnInit is { } ex)
        {
            ThrowOnInit = null;
            throw ex;
        }
    }

    /// <summary>Thrown from the next InitHardwareContext only, then cleared (a driver bug).</summary>
    public Exception? ThrowOnInit { get; set; }

    /// <summary>Thrown from every ExitHardwareContext when set (a driver bug).</summary>
    public Exception? ThrowOnExit { get; set; }

    public void ExitHardwareContext(HardwareContext hctx)
    {
        if (ThrowOnExit is { } ex)
        {
            throw ex;
        }
    }

    public BlockStatus QueueRq(HardwareContext hctx, Request request, bool last)
    {
        if (HoldGate is { } gate && hctx.Index == HoldQueue)
        {
            _held.TrySetResult();
            gate.Wait();
        }

        if (ThrowOnQueue is { } ex)
        {
            throw ex;
        }

        lock (_lock)
        {
            if (ThrowOnce is { } once)
            {
                ThrowOnce = null;
                throw once;
            }
        }

        BlockStatus answer;
        lock (_lock)
        {
            answer = _script.Count > 0 ? _script.Dequeue() : BlockStatus.Ok;
            Calls.Add((request, last, answer));
        }

        if (answer != BlockStatus.Ok)
        {
            return answer;
        }

        if (StartRequests)
        {
            request.Start();
        }

        if (hctx.Type == ActorBlk.Hardware.Topology.HctxType.Poll)
        {
            lock (_lock)
            {
                Polled.Add(request);
            }

            return BlockStatus.Ok;
        }

        if (CompleteInline || ThrowAfterComplete is not null)
        {
            request.End(BlockStatus.Ok);
            lock (_lock)
            {
                if (ThrowAfterComplete is { } after)
                {
                    ThrowAfterComplete = null;
                    throw after;
                }
            }
        }
        else
        {
            lock (_lock)
            {
                InFlight.Add(request);
            }
        }

        return BlockStatus.Ok;
    }

    public void CommitRqs(HardwareContext hctx)
    {
        CommitCalls++;
        if (ThrowOnCommit is { } ex)
        {
            throw ex;
        }
    }

    /// <summary>Thrown from CommitRqs when set (a driver bug).</summary>
    public Exception? ThrowOnCommit { get; set; }

    /// <summary>Thrown from the next Poll only, then cleared (a driver bug in its poll); what it polled stays.</summary>
    public Exception? ThrowOnPollOnce { get; set; }

    /// <summary>Thrown from every Poll while set (a driver whose poll is broken).</summary>
    public Exception? ThrowOnPoll { get; set; }

    /// <summary>Calls of Poll, thrown or not.</summary>
    public int PollCalls => Volatile.Read(ref _pollCalls);

    public int Poll(HardwareContext hctx)
    {
        List<Request> done;
        lock (_lock)
        {
            _pollCalls++;
            if (ThrowOnPollOnce is { } once)
            {
                ThrowOnPollOnce = null;
                throw once;
            }

            if (ThrowOnPoll is { } always)
            {
                throw always;
            }

            done = [.. Polled];
            Polled.Clear();
        }

        return done.Count(rq => rq.Complete(BlockStatus.Ok));
    }

    /// <summary>Thrown from the next Timeout only, then cleared (a driver bug in its timeout handler).</summary>
    public Exception? ThrowOnTimeoutOnce { get; set; }

    /// <summary>Thrown from every Timeout while set (a driver whose timeout handler is broken).</summary>
    public Exception? ThrowOnTimeout { get; set; }

    public TimeoutAction Timeout(Request request)
    {
        lock (_lock)
        {
            TimedOut.Add(request);
            if (ThrowOnTimeoutOnce is { } once)
            {
                ThrowOnTimeoutOnce = null;
                throw once;
            }

            if (ThrowOnTimeout is { } always)
            {
                throw always;
            }
        }

        return TimeoutAnswer;
    }

    /// <summary>Completes every request in flight with <paramref name="status"/>; returns how many.</summary>
    public int CompleteAll(BlockStatus status = BlockStatus.Ok)
    {
        List<Request> all;
        lock (_lock)
        {
            all = [.. InFlight];
            InFlight.Clear();
        }

        return all.Count(rq => rq.Complete(status));
    }

    public void Reset()
    {
        Interlocked.Increment(ref _resetsBegun);
        Interlocked.Increment(ref _resetsRunning);
        try
        {
            WaitFor(ResetGate);
            lock (_lock)
            {
                ResetCalls++;
                InFlight.Clear();
                Polled.Clear();
            }
        }
        finally
        {
            Interlocked.Decrement(ref _resetsRunning);
        }
    }

    public void Reopen()
    {
        Interlocked.Increment(ref _reopensBegun);
        Interlocked.Increment(ref _reopensRunning);
        try
        {
            WaitFor(ReopenGate);
            ReopenLocked();
        }
        finally
        {
            Interlocked.Decrement(ref _reopensRunning);
        }
    }

    public void CancelRecovery() => _recoveryCancelled.TrySetResult();

    private void WaitFor(Task? gate)
    {
        if (!CancelsRecovery)
        {
            gate?.Wait();
            return;
        }

        if (gate is not null)
        {
            Task.WhenAny(gate, _recoveryCancelled.Task).Wait();
        }

        if (RecoveryCancelled)
        {
            throw new BlockDeviceErrorException("recovery cancelled: the device is being removed", deviceGone: true);
        }
    }

    private void ReopenLocked()
    {
        lock (_lock)
        {
            ReopenCalls++;
            if (ReopenFailures < 0 || ReopenCalls <= ReopenFailures)
            {
                throw new BlockDeviceErrorException($"still gone (attempt {ReopenCalls})", deviceGone: true);
            }

            InFlight.Clear();
        }
    }

    public bool Disposed { get; private set; }

    public void Dispose()
    {
        DisposedDuringReopen |= Volatile.Read(ref _reopensRunning) > 0;
        DisposedDuringReset |= Volatile.Read(ref _resetsRunning) > 0;
        Disposed = true;
    }
}
