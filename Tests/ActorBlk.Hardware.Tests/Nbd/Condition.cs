namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>Awaits a condition that other threads make true (TestKit's AwaitCondition for data-plane specs).</summary>
public static class Condition
{
    public static readonly TimeSpan Timeout = TimeSpan.FromSeconds(60);

    /// <summary>
    /// Polls <paramref name="condition"/> until it holds; fails with <paramref name="what"/> after a
    /// generous timeout, and with <paramref name="state"/>'s report of what the test saw last when given.
    /// </summary>
    public static async Task EventuallyAsync(Func<bool> condition, string what, Func<string>? state = null)
    {
        var deadline = DateTime.UtcNow + Timeout;
        while (!condition())
        {
            if (DateTime.UtcNow > deadline)
            {
                throw new TimeoutException($"not true within {Timeout.TotalSeconds} s: {what}{(state is null ? "" : " " + state())}");
            }

            await Task.Delay(10);
        }
    }
}
