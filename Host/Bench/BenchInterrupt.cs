using System.Runtime.InteropServices;

namespace ActorBlk.Host.Bench;

/// <summary>
/// SIGINT and SIGTERM during <c>actorblk bench</c>, as fio treats them. Before the run (devices
/// being created, a cluster being joined) the process exits at once with 128: there is nothing
/// to report. During the run the signal ends the measured window early, and the bench winds the
/// jobs down, removes its devices and prints its report, then exits with 128. A second signal
/// exits at once, without waiting for the report.
/// </summary>
internal sealed class BenchInterrupt : IDisposable
{
    private readonly CancellationTokenSource _stop = new();
    private readonly PosixSignalRegistration? _int;
    private readonly PosixSignalRegistration? _term;
    private int _state; // 0 before the run, 1 running, 2 after it
    private int _signals;

    public BenchInterrupt()
    {
        if (OperatingSystem.IsWindows())
        {
            return;
        }

        _int = PosixSignalRegistration.Create(PosixSignal.SIGINT, OnSignal);
        _term = PosixSignalRegistration.Create(PosixSignal.SIGTERM, OnSignal);
    }

    /// <summary>Runs before an exit at a signal (the node leaves its cluster, its devices are removed); bounded by the caller.</summary>
    public Action? BeforeExit { get; set; }

    /// <summary>The signal that stopped the run (SIGINT, SIGTERM), or null.</summary>
    public string? Signal { get; private set; }

    /// <summary>The run starts: a signal from now on ends it through the returned token.</summary>
    public CancellationToken Begin()
    {
        Volatile.Write(ref _state, 1);
        return _stop.Token;
    }

    /// <summary>Ends the run as a signal would, without one (stdout's reader went away: no report can be shown).</summary>
    public void Stop()
    {
        try
        {
            _stop.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // The bench is finishing: nothing left to stop.
        }
    }

    /// <summary>The run is over: a signal from now on is noted and waits for the report (a second one does not).</summary>
    public void End() => Volatile.Write(ref _state, 2);

    public void Dispose()
    {
        _int?.Dispose();
        _term?.Dispose();
        _stop.Dispose();
    }

    private void OnSignal(PosixSignalContext context)
    {
        // The runtime's default (ending the process, which runs Akka's shutdown hook under the
        // jobs) is replaced by ours.
        context.Cancel = true;
        var name = context.Signal == PosixSignal.SIGINT ? "SIGINT" : "SIGTERM";
        if (Interlocked.Increment(ref _signals) > 1 || Volatile.Read(ref _state) == 0)
        {
            Console.Error.WriteLine($"actorblk bench: terminating on signal {name}");
            try
            {
                BeforeExit?.Invoke();
            }
#pragma warning disable CA1031 // the process exits either way
            catch (Exception)
#pragma warning restore CA1031
            {
            }

            Environment.Exit(BenchExit.Interrupted);
            return;
        }

        Signal = name;
        Console.Error.WriteLine($"actorblk bench: terminating on signal {name}; the report covers the run until now");
        try
        {
            _stop.Cancel();
        }
        catch (ObjectDisposedException)
        {
            // The bench is finishing (its registrations are being disposed): nothing left to stop.
        }
    }
}

/// <summary>Exit codes of the bench that are not the command line's own.</summary>
internal static class BenchExit
{
    /// <summary>The run was stopped by SIGINT or SIGTERM (fio exits with 128 too).</summary>
    public const int Interrupted = 128;
}
