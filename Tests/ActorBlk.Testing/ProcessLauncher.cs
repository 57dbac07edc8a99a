using System.Collections.Concurrent;
using System.Diagnostics;

namespace ActorBlk.Testing;

/// <summary>
/// Starts server processes that must live as long as the spec wants them (nbdkit) from one
/// thread that lives as long as the test process.
/// </summary>
/// <remarks>
/// nbdkit (1.32, Debian's) calls <c>prctl(PR_SET_PDEATHSIG, SIGTERM)</c> at start-up whether or
/// not it is given <c>--exit-with-parent</c> (seen with strace). The signal fires when the
/// <em>thread</em> that forked it ends, not its process, and <see cref="Process.Start(ProcessStartInfo)"/>
/// forks on the calling thread: a spec whose code ran on a thread that ended soon after (a
/// thread-pool thread retired, a long-running task's thread that finished) lost its nbdkit to a
/// SIGTERM: "nbdkit exited with 0 (or 143) before listening", or "Connection refused" once it had
/// listened (traced with the kernel's signal_generate event: the sender was the exiting
/// ".NET Long Running Task" thread that had forked nbdkit).
/// </remarks>
public static class ProcessLauncher
{
    private static readonly BlockingCollection<(ProcessStartInfo Info, TaskCompletionSource<Process> Started)> Launches = StartLauncher();

    /// <summary>Starts <paramref name="info"/> from the launcher thread.</summary>
    /// <param name="info">What to start.</param>
    /// <returns>The started process.</returns>
    public static Task<Process> StartAsync(ProcessStartInfo info)
    {
        ArgumentNullException.ThrowIfNull(info);
        var started = new TaskCompletionSource<Process>(TaskCreationOptions.RunContinuationsAsynchronously);
        Launches.Add((info, started));
        return started.Task;
    }

    private static BlockingCollection<(ProcessStartInfo Info, TaskCompletionSource<Process> Started)> StartLauncher()
    {
        var launches = new BlockingCollection<(ProcessStartInfo Info, TaskCompletionSource<Process> Started)>();
        void Run()
        {
            foreach (var (info, started) in launches.GetConsumingEnumerable())
            {
                try
                {
                    started.SetResult(Process.Start(info) ?? throw new InvalidOperationException($"{info.FileName} did not start."));
                }
                catch (Exception ex)
                {
                    started.SetException(ex);
                }
            }
        }

        new Thread(Run) { IsBackground = true, Name = "process launcher" }.Start();
        return launches;
    }
}
