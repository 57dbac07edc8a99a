using System.Collections.Concurrent;
using System.Diagnostics;
using ActorBlk.Hardware.Topology;
using Akka.Actor;
using Akka.Configuration;
using Akka.Dispatch;

namespace ActorBlk.Actors;

/// <summary>
/// The Akka dispatcher of one CPU's block-layer actors in mailbox dispatch: the software-context
/// actor of the CPU and the driver actor of every hardware queue whose home CPU it is run on one
/// dedicated thread, which spins briefly when idle and then parks (as a ring dispatch loop does).
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

    private readonly ConcurrentQueue<IRunnable> _queue = new();
    private readonly ManualResetEventSlim _wake = new(false, spinCount: 0);
    private readonly int _cpu;
    private readonly bool _pin;
    private readonly long _spinTicks;
    private readonly string _threadName;

    // 1 while a thread serves the queue (or is about to start); the thread clears it when it ends.
    private int _running;
    private int _sleeping;
    private volatile bool _stopping;

    public MailboxDispatcher(MessageDispatcherConfigurator configurator, string id, int cpu, bool pin, TimeSpan spin, int throughput)
        : base(configurator)
    {
        _cpu = cpu;
        _pin = pin;
        _spinTicks = (long)(spin.TotalSeconds * Stopwatch.Frequency);
        _threadName = $"actorblk/mailbox/cpu{cpu}";
        Id = id;
        Throughput = throughput;
    }

    /// <summary>True on this dispatcher's thread (within a turn of one of its actors).</summary>
    public bool IsCurrentThread => t_current == this;

    /// <summary>Times the thread went to sleep (for tests and diagnostics).</summary>
    public long Parks { get; private set; }

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
            t_current = null;
        }
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

    private void Park()
    {
        var spinUntil = Stopwatch.GetTimestamp() + _spinTicks;
        while (Stopwatch.GetTimestamp() < spinUntil)
        {
            if (!_queue.IsEmpty || _stopping)
            {
                return;
            }

            Thread.SpinWait(8);
        }

        _wake.Reset();
        Interlocked.Exchange(ref _sleeping, 1);
        if (!_queue.IsEmpty || _stopping)
        {
            Volatile.Write(ref _sleeping, 0);
            return;
        }

        Parks++;
        _wake.Wait();
        Volatile.Write(ref _sleeping, 0);
    }
}

/// <summary>Makes the <see cref="MailboxDispatcher"/> of each CPU, registered with Akka under its own id on first use.</summary>
internal sealed class MailboxDispatcherConfigurator : MessageDispatcherConfigurator
{
    private readonly MailboxDispatcher _instance;

    private MailboxDispatcherConfigurator(Config config, IDispatcherPrerequisites prerequisites, string id, int cpu, bool pin, TimeSpan spin, int throughput)
        : base(config, prerequisites) =>
        _instance = new MailboxDispatcher(this, id, cpu, pin, spin, throughput);

    public override MessageDispatcher Dispatcher() => _instance;

    /// <summary>
    /// The dispatcher id of <paramref name="cpu"/>'s block-layer actors in <paramref name="system"/>,
    /// registering the dispatcher on first use.
    /// </summary>
    public static string For(ActorSystem system, int cpu, bool pin, TimeSpan spin, int throughput)
    {
        var id = $"actorblk.mailbox-dispatcher-cpu{cpu}";
        var dispatchers = system.Dispatchers;
        if (!dispatchers.HasDispatcher(id))
        {
            var config = ConfigurationFactory.ParseString($"id = \"{id}\"").WithFallback(dispatchers.DefaultDispatcherConfig);
            var configurator = new MailboxDispatcherConfigurator(config, dispatchers.Prerequisites, id, cpu, pin, spin, throughput);
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
