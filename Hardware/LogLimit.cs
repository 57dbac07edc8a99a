namespace ActorBlk.Hardware;

/// <summary>Rate limits of log lines that a peer or a fault could otherwise repeat without bound.</summary>
internal static class LogLimit
{
    /// <summary>
    /// True for the first event of a kind (<paramref name="count"/> 1), then for one a minute at
    /// most; <paramref name="lastLogged"/> holds when the last true was answered.
    /// </summary>
    public static bool FirstOrAMinuteOn(long count, ref long lastLogged)
    {
        var now = Environment.TickCount64;
        if (count != 1 && now - Volatile.Read(ref lastLogged) < 60_000)
        {
            return false;
        }

        Volatile.Write(ref lastLogged, now);
        return true;
    }
}
