namespace ActorBlk.Actors;

/// <summary>Helpers for tasks nobody waits for any more.</summary>
internal static class TaskFaults
{
    /// <summary>
    /// Observes the fault of a task left behind (an ask to an actor that died, or abandoned when
    /// its system terminated: it ends in a timeout), so it is not reported as unobserved.
    /// </summary>
    public static void ObserveFault(this Task task) =>
        task.ContinueWith(static t => t.Exception, CancellationToken.None, TaskContinuationOptions.OnlyOnFaulted, TaskScheduler.Default);
}
