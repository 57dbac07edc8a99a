using System.Numerics;
using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;
using ActorBlk.Hardware.Rings;

namespace ActorBlk.Hardware.Drivers.File;

/// <summary>
/// The psync engine: requests go through a lock-free ring to one dedicated thread per hardware
/// queue, which runs each with pread/pwrite (preadv2/pwritev2), fdatasync, fallocate or the block
/// ioctls and completes it. Never the shared thread pool: a blocking system call there would
/// starve unrelated work.
/// </summary>
internal sealed class PsyncEngine : FileEngine
{
    private readonly PsyncWorker _worker;

    public PsyncEngine(FileTarget target, HardwareContext hctx, string? reason)
        : base(target, hctx)
    {
        Reason = reason;
        _worker = new PsyncWorker(this, $"actorblk/{hctx.Queue.Name}/psync{hctx.Index}");
    }

    /// <inheritdoc />
    public override string Name => "psync";

    /// <summary>Why psync serves this queue when io_uring was asked for, or null when psync was chosen.</summary>
    public string? Reason { get; }

    /// <inheritdoc />
    public override string Details => Reason is null ? "chosen by configuration" : $"fallback: {Reason}";

    /// <inheritdoc />
    public override int Outstanding => _worker.Outstanding;

    /// <inheritdoc />
    public override BlockStatus Queue(Request rq, bool last)
    {
        _worker.Post(rq);
        return BlockStatus.Ok;
    }

    /// <inheritdoc />
    public override void Dispose()
    {
        _worker.Dispose();
        base.Dispose();
    }
}

/// <summary>
/// One dedicated thread that runs requests synchronously for a <see cref="FileEngine"/>. Posting
/// is lock-free; the thread parks on an event when its ring is empty, with the same Dekker pair of
/// fences as the dispatch loop, so no wake-up is lost.
/// </summary>
/// <remarks>
/// A request posted once the thread has stopped (<see cref="Dispose"/>) completes at once, on the
/// posting thread, with <see cref="BlockStatus.Offline"/>, exactly once, and leaves
/// <see cref="Outstanding"/>: the io_uring engine's reaper can outlive the engine's 30 s drain
/// limit and post a zeroing fallback after its worker was stopped. Before, such a request sat in
/// the ring for ever, counted outstanding, and <see cref="FileBlockDriver.Abandon"/> waited for it
/// for ever.
/// </remarks>
internal sealed class PsyncWorker : IDisposable
{
    private readonly FileEngine _engine;
    private readonly MpscRing<Request> _ring;
    private readonly ManualResetEventSlim _wake = new(false, spinCount: 0);
    private readonly Thread _thread;
    private readonly Lock _exitLock = new();
    private int _sleeping;
    private int _outstanding;
    private int _exited;
    private int _disposed;
    private volatile bool _stopping;

    public PsyncWorker(FileEngine engine, string name)
    {
        _engine = engine;
        _ring = new MpscRing<Request>((int)BitOperations.RoundUpToPowerOf2((uint)Math.Max(2, engine.Hctx.Tags.NrTags)));
        _thread = new Thread(Run) { IsBackground = true, Name = name };
        _thread.Start();
    }

    /// <summary>Requests posted and not yet completed.</summary>
    public int Outstanding => Volatile.Read(ref _outstanding);

    /// <summary>Queues a started request; it completes on the worker thread.</summary>
    public void Post(Request rq)
    {
        Interlocked.Increment(ref _outstanding);
        if (!_ring.TryPublish(rq))
        {
            Interlocked.Decrement(ref _outstanding);
            // The ring holds every tag of the hardware queue: a full ring is a bug, not load.
            throw new InvalidOperationException($"{_engine.Hctx}: the psync ring is full.");
        }

        Interlocked.MemoryBarrier();
        if (Volatile.Read(ref _exited) != 0)
        {
            // The thread is gone (or going): it takes nothing more, so this fails what it left.
            FailLeft();
            return;
        }

        if (Volatile.Read(ref _sleeping) != 0)
        {
            _wake.Set();
        }
    }

    /// <summary>Runs what was posted, then stops the thread; what is posted later fails with <see cref="BlockStatus.Offline"/> at once.</summary>
    public void Dispose()
    {
        if (Interlocked.Exchange(ref _disposed, 1) != 0)
        {
            return;
        }

        _stopping = true;
        _wake.Set();
        if (Thread.CurrentThread != _thread)
        {
            _thread.Join();
        }

        _wake.Dispose();
    }

    private void Run()
    {
        while (true)
        {
            while (_ring.TryTake(out var rq))
            {
                Execute(rq);
            }

            if (_stopping)
            {
                // Announced before the ring is looked at a last time (a full fence, paired with
                // Post's): a post either sees the exit and fails its own request, or its request
                // is in the ring for this last look. Either way it completes once.
                Interlocked.Exchange(ref _exited, 1);
                FailLeft();
                return;
            }

            _wake.Reset();
            Interlocked.Exchange(ref _sleeping, 1);
            if (_ring.IsEmpty && !_stopping)
            {
                _wake.Wait();
            }

            Volatile.Write(ref _sleeping, 0);
        }
    }

    // Once the thread exited: fails what is in the ring with Offline. The ring has one consumer at
    // a time: the exiting thread and posters take under the lock, one request at a time, and
    // complete it outside it (its end_io may post again).
    private void FailLeft()
    {
        while (true)
        {
            Request? rq;
            lock (_exitLock)
            {
                if (!_ring.TryTake(out rq))
                {
                    return;
                }
            }

            var command = _engine.Command(rq.Tag);
            command.Begin(rq);
            FileEngine.Complete(command, BlockStatus.Offline);
            Interlocked.Decrement(ref _outstanding);
        }
    }

    private void Execute(Request rq)
    {
        var command = _engine.Command(rq.Tag);
        command.Begin(rq);
        BlockStatus status;
        try
        {
            status = FileEngine.ExecuteSync(_engine.Target, command, rq);
        }
        catch (Exception ex) when (ex is not OutOfMemoryException)
        {
            // A buffer that cannot be pinned (a disposed memory manager, say) fails this request only.
            status = BlockStatus.IoError;
        }

        FileEngine.Complete(command, status);
        Interlocked.Decrement(ref _outstanding);
    }
}
