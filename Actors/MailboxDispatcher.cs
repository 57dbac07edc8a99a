using System.Collections.Concurrent;
using System.Diagnostics;
using ActorBlk.Hardware.Drivers;
using ActorBlk.Hardware.Topology;
using Akka.Actor;
using Akka.Configuration;
using Akka.Dispatch;

namespace ActorBlk.Actors;

/// <summary>
/// The Akka dispatcher of one CPU's block-layer actors in mailbox dispatch: the software-context
/// actor of the CPU and the driver actor of every hardware queue whose home CPU it is run on one
/// dedicated thread, which spins briefly when idle, longer while I/O submitted on its CPU is
/// outstanding (<see cref="MailboxIdleSpin"/>), and then parks.
/// </summary>
/// <remarks>
/// <para>
/// On the .NET thread pool each hop of a request (bio to the context actor, <c>Run</c> to the
/// driver actor, the next bio from the completion) could land on another pool thread, and each
/// cost a wake-up of a parked worker: a futex system call and a context switch, about a
/// microsecond on a 2-vCPU VM. With the actors of one CPU on one thread, a completion that
/// submits the next I/O enqueues it on the thread that is already running; nothing is woken, and
/// the context actor stages a whole batch before the driver actor takes it.
/// </para>
/// <para>
/// With the system's topology the thread is pinned to its CPU, so rq_affinity redirects a
/// completion to where its submitter runs, as in ring dispatch; with a simulated topology CPU ids
/// are labels and the thread runs where the scheduler puts it.
/// </para>
/// <para>
/// The thread starts with the first message and ends when Akka shuts the dispatcher down (no
/// actor left on it for the dispatcher's shutdown-timeout) or the actor system terminates; a later
/// message starts it again. Lost wake-ups are excluded by Dekker pairs of full fences: the thread
/// announces that it sleeps (or that it ends) and then looks at the queue once more; a producer
/// enqueues and then looks at the announcement.
/// </para>
/// </remarks>
internal sealed class MailboxDispatcher : MessageDispatcher
{
    [ThreadStatic]
    private static MailboxDispatcher? t_current;

    // Every this many pauses of the idle spin the thread yields its CPU (sched_yield).
    private const int YieldEvery = 4;

    private readonly ConcurrentQueue<IRunnable> _queue = new();
    private readonly ManualResetEventSlim _wake = new(false, spinCount: 0);
    private readonly int _cpu;
    private readonly bool _pin;
    private readonly long _spinTicks;
    private readonly long _busySpinTicks;
    private readonly string _threadName;
    private readonly object _sourcesLock = new();

    // Timer completions armed on this thread (null_blk's timer mode): fired here, between turns.
    private readonly CpuTimerHost _timers = new();

    // What the idle thread asks before it parks (copy on write: the thread reads it without a lock).
    private IMailboxWorkSource[] _sources = [];
    private MailboxIdleSpin _idle;

    // 1 while a thread serves the queue (or is about to start); the thread clears it when it ends.
    private int _running;
    private int _sleeping;
    private volatile bool _stopping;

    public MailboxDispatcher(MessageDispatcherConfigurator configurator, string id, int cpu, bool pin, TimeSpan spin, int throughput, TimeSpan busySpin)
        : base(configurator)
    {
        _cpu = cpu;
        _pin = pin;
        _spinTicks = (long)(spin.TotalSeconds * Stopwatch.Frequency);
        _busySpinTicks = (long)(busySpin.TotalSeconds * Stopwatch.Frequency);
        _idle = new MailboxIdleSpin(_spinTicks, _busySpinTicks);
        _threadName = $"actorblk/mailbox/cpu{cpu}";
        Id = id;
        Throughput = throughput;
    }

    /// <summary>True on this dispatcher's thread (within a turn of one of its actors).</summary>
    public bool IsCurrentThread => t_current == this;

    /// <summary>True on the thread of any per-CPU mailbox dispatcher (within a turn of one of its actors).</summary>
    public static bool IsAnyCurrentThread => t_current is not null;

    /// <summary>Times the thread went to sleep (for tests and diagnostics).</summary>
    public long Parks { get; private set; }

    /// <summary>
    /// Spin intervals the idle thread added because work was expected (a watched source had I/O
    /// outstanding), instead of parking (for tests and diagnostics). Written by this thread only.
    /// </summary>
    public long BusySpinExtensions => _idle.Extensions;

    /// <summary>Times the idle thread parked at the busy-spin bound although work was still expected.</summary>
    public long BusySpinBoundReached => _idle.BoundReached;

    /// <summary>
    /// Asks <paramref name="source"/>, from now on, whether work is expected before the idle thread
    /// parks (a software-context actor on this thread, while it lives).
    /// </summary>
    public void Watch(IMailboxWorkSource source)
    {
        lock (_sourcesLock)
        {
            Volatile.Write(ref _sources, [.. _sources, source]);
        }
    }

    /// <summary>Stops asking <paramref name="source"/> (<see cref="Watch"/>).</summary>
    public void Unwatch(IMailboxWorkSource source)
    {
        lock (_sourcesLock)
        {
            var index = Array.IndexOf(_sources, source);
            if (index >= 0)
            {
                Volatile.Write(ref _sources, [.. _sources.AsSpan(0, index), .. _sources.AsSpan(index + 1)]);
            }
        }
    }

    /// <summary>
    /// Bios whose submission path ran at once on this thread instead of as a message to their
    /// context actor (<see cref="MailboxRuntime.Submit"/>). Written by this thread only.
    /// </summary>
    public long InlineSubmissions { get; internal set; }

    /// <summary>True while a thread serves the dispatcher.</summary>
    public bool IsRunning => Volatile.Read(ref _running) != 0;

    /// <summary>Threads started so far (the first message, and again after each shutdown).</summary>
    public int ThreadsStarted => Volatile.Read(ref _threadsStarted);

    private int _threadsStarted;
    private int _pauses;

    protected override void ExecuteTask(IRunnable run)
    {
        _queue.Enqueue(run);
        if (t_current == this)
        {
            // Enqueued by the thread itself: it is awake by definition.
            return;
        }

        // Pairs with the fences in Park and Exit: the item is visible before the flags are read.
        Interlocked.MemoryBarrier();
        if (Volatile.Read(ref _running) == 0)
        {
            StartThread();
        }
        else if (Volatile.Read(ref _sleeping) != 0)
        {
            _wake.Set();
        }
    }

    /// <summary>Ends the thread (the actor system terminated).</summary>
    public void Terminate() => Shutdown();

    protected override void Shutdown()
    {
        _stopping = true;
        _wake.Set();
    }

    private void StartThread()
    {
        if (Interlocked.CompareExchange(ref _running, 1, 0) != 0)
        {
            // Another producer started it, or the ending thread took the item back.
            Interlocked.MemoryBarrier();
            if (Volatile.Read(ref _sleeping) != 0)
            {
                _wake.Set();
            }

            return;
        }

        _stopping = false;
        Interlocked.Increment(ref _threadsStarted);
        new Thread(Run) { IsBackground = true, Name = _threadName }.Start();
    }

    private void Run()
    {
        t_current = this;
        _timers.Attach();
        if (_pin)
        {
            CpuAffinity.TryPinCurrentThread(CpuSet.Of(_cpu), _threadName);
        }

        try
        {
            while (true)
            {
                while (_queue.TryDequeue(out var run))
                {
                    try
                    {
                        run.Run();
                    }
                    catch (Exception ex)
                    {
                        // Akka handles an actor's failure within the mailbox's run; anything that
                        // still escapes is reported, and must not end the thread the CPU's actors need.
                        ReportFailure(ex);
                    }

                    FireTimers(all: false);
                }

                if (FireTimers(all: _stopping) != 0)
                {
                    continue;
                }

                if (_stopping)
                {
                    if (TryExit())
                    {
                        return;
                    }

                    continue;
                }

                Park();
            }
        }
        finally
        {
            CpuTimerHost.Detach();
            t_current = null;
        }
    }

    /// <summary>The thread's state for a stall report (tests and diagnostics).</summary>
    public string Describe() =>
        $"{_threadName} running {Volatile.Read(ref _running)}, sleeping {Volatile.Read(ref _sleeping)}, stopping {_stopping}, {_queue.Count} mailbox(es) queued, {Parks} park(s), {ThreadsStarted} thread(s) started, {_timers.Count} timer(s) armed";

    /// <summary>Timer completions armed on this thread and not fired yet (tests and diagnostics).</summary>
    public int TimersArmed => _timers.Count;

    /// <summary>Timer completions this thread fired itself (tests and diagnostics). Written by this thread only.</summary>
    public long TimersFired { get; private set; }

    // Fires the timer completions armed on this thread that are due (all of them when the thread
    // ends, as the timer's own thread delivers what is pending when it is disposed).
    private int FireTimers(bool all)
    {
        if (_timers.Count == 0)
        {
            return 0;
        }

        var n = 0;
        try
        {
            n = _timers.FireDue(Stopwatch.GetTimestamp(), all);
        }
        catch (Exception ex)
        {
            n = 1;
            ReportFailure(ex);
        }

        TimersFired += n;
        return n;
    }

    // Ends the thread unless an item came in meanwhile (then it keeps serving).
    private bool TryExit()
    {
        Volatile.Write(ref _running, 0);
        Interlocked.MemoryBarrier();
        if (_queue.IsEmpty)
        {
            return true;
        }

        // An item came in: serve it, unless a producer already started a new thread for it.
        return Interlocked.CompareExchange(ref _running, 1, 0) != 0;
    }

    // Spins while work is expected soon (MailboxIdleSpin), then parks.
    private void Park()
    {
        _idle.Begin(Stopwatch.GetTimestamp());
        var probe = new SourcesProbe(Volatile.Read(ref _sources), _timers);
        while (true)
        {
            long now;
            while (_idle.InInterval(now = Stopwatch.GetTimestamp()))
            {
                if (!_queue.IsEmpty || _stopping || now >= _timers.NextDue)
                {
                    return;
                }

                if (++_pauses % YieldEvery == 0)
                {
                    // A thread that shares this CPU (an unpinned completion thread whose end-io
                    // hands work to this thread) gets it now rather than at the end of our slice.
                    Thread.Yield();
                }
                else
                {
                    Thread.SpinWait(8);
                }
            }

            if (!_queue.IsEmpty || _stopping)
            {
                return;
            }

            if (!_idle.Extend(Stopwatch.GetTimestamp(), ref probe))
            {
                break;
            }
        }

        _wake.Reset();
        Interlocked.Exchange(ref _sleeping, 1);
        if (!_queue.IsEmpty || _stopping)
        {
            Volatile.Write(ref _sleeping, 0);
            return;
        }

        Parks++;
        if (_timers.Count == 0)
        {
            _wake.Wait();
        }
        else
        {
            // A completion armed here is due later: sleep until then at most.
            var ticks = _timers.NextDue - Stopwatch.GetTimestamp();
            if (ticks > 0)
            {
                _wake.Wait(TimeSpan.FromSeconds((double)ticks / Stopwatch.Frequency));
            }
        }

        Volatile.Write(ref _sleeping, 0);
    }

    // The watched sources, asked in turn, and the timer completions armed here (each is work due
    // soon); a struct so the idle loop allocates nothing.
    private readonly struct SourcesProbe(IMailboxWorkSource[] sources, CpuTimerHost timers) : IExpectedWorkProbe
    {
        public bool ExpectsWork()
        {
            if (timers.Count != 0)
            {
                return true;
            }

            foreach (var source in sources)
            {
                if (source.ExpectsWork)
                {
                    return true;
                }
            }

            return false;
        }
    }
}

/// <summary>Makes the <see cref="MailboxDispatcher"/> of each CPU, registered with Akka under its own id on first use.</summary>
internal sealed class MailboxDispatcherConfigurator : MessageDispatcherConfigurator
{
    private readonly MailboxDispatcher _instance;

    private MailboxDispatcherConfigurator(Config config, IDispatcherPrerequisites prerequisites, string id, int cpu, bool pin, TimeSpan spin, int throughput, TimeSpan busySpin)
        : base(config, prerequisites) =>
        _instance = new MailboxDispatcher(this, id, cpu, pin, spin, throughput, busySpin);

    public override MessageDispatcher Dispatcher() => _instance;

    /// <summary>
    /// The dispatcher id of <paramref name="cpu"/>'s block-layer actors in <paramref name="system"/>,
    /// registering the dispatcher on first use (the settings of the first call stay).
    /// </summary>
    /// <param name="system">The actor system.</param>
    /// <param name="cpu">The CPU.</param>
    /// <param name="pin">Pin the thread to the CPU.</param>
    /// <param name="spin">How long the idle thread spins before it parks.</param>
    /// <param name="throughput">Messages per actor turn.</param>
    /// <param name="busySpin">
    /// How long, at most, the idle thread spins while a watched source expects work
    /// (<see cref="MailboxIdleSpin"/>); at most <paramref name="spin"/> turns it off.
    /// </param>
    public static string For(ActorSystem system, int cpu, bool pin, TimeSpan spin, int throughput, TimeSpan busySpin = default)
    {
        var id = $"actorblk.mailbox-dispatcher-cpu{cpu}";
        var dispatchers = system.Dispatchers;
        if (!dispatchers.HasDispatcher(id))
        {
            var config = ConfigurationFactory.ParseString($"id = \"{id}\"").WithFallback(dispatchers.DefaultDispatcherConfig);
            var configurator = new MailboxDispatcherConfigurator(config, dispatchers.Prerequisites, id, cpu, pin, spin, throughput, busySpin);
            if (dispatchers.RegisterConfigurator(id, configurator))
            {
                // Ends the thread with the actor system even if Akka never shuts the dispatcher down.
                var dispatcher = configurator._instance;
                system.WhenTerminated.ContinueWith(static (_, d) => ((MailboxDispatcher)d!).Terminate(), dispatcher, TaskScheduler.Default);
            }
        }

        return id;
    }
}
