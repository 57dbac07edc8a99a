namespace ActorBlk.Hardware;

/// <summary>
/// Raises an event to each of its handlers apart: one that throws (an application's bug) is
/// skipped, so neither the code raising it (an I/O completion, a sync, an actor) breaks on a
/// listener nor do the handlers after it miss the event.
/// </summary>
internal static class Listeners
{
    /// <summary>Calls <paramref name="call"/> with each handler of <paramref name="handlers"/>; an exception of one is dropped.</summary>
    public static void Raise<TDelegate>(TDelegate? handlers, Action<TDelegate> call)
        where TDelegate : Delegate
    {
        if (handlers is null)
        {
            return;
        }

        foreach (var handler in handlers.GetInvocationList().Cast<TDelegate>())
        {
            try
            {
                call(handler);
            }
            catch (Exception)
            {
                // A listener's fault is not the caller's.
            }
        }
    }
}
