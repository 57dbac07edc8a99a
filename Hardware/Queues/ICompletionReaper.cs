namespace ActorBlk.Hardware.Queues;

/// <summary>
/// A driver's source of completions that the dispatch thread of a hardware queue serves itself,
/// as one io_uring instance per queue is submitted to and reaped by one thread. A driver attaches
/// it to <see cref="HardwareContext.Reaper"/> in <c>InitHardwareContext</c> when
/// <see cref="HardwareContext.HasDispatchThread"/> is true.
/// </summary>
/// <remarks>
/// <para>
/// With a reaper attached, the dispatch loop reaps after every round, and when it has nothing to
/// dispatch it sleeps in <see cref="Wait"/> (in the kernel, for io_uring) instead of on its own
/// event; <see cref="Wake"/> interrupts that sleep when a submitter stages work. A wake-up that
/// arrives before <see cref="Wait"/> starts must make it return at once.
/// </para>
/// <para>
/// Completions run on the dispatch thread; <see cref="Queues.RequestQueue.CompleteRequest"/>
/// redirects them as rq_affinity says.
/// </para>
/// </remarks>
public interface ICompletionReaper
{
    /// <summary>Completes whatever has finished, without blocking; returns how many requests it completed.</summary>
    int Reap();

    /// <summary>
    /// Hands pending submissions to the device and blocks until at least one completion arrives,
    /// <see cref="Wake"/> is called, or <paramref name="timeoutMs"/> passes (negative: no limit);
    /// then completes what has finished. Returns how many requests it completed.
    /// </summary>
    int Wait(int timeoutMs);

    /// <summary>Makes a current or the next <see cref="Wait"/> return. Callable from any thread.</summary>
    void Wake();
}
