using System.Runtime.CompilerServices;

namespace ActorBlk.Actors.Tests.Support;

internal static class ThreadPoolWarmup
{
    // TestKit start-up blocks pool threads (logger start, test actor); on a two-core machine the
    // pool injects about one thread per 500 ms, so parallel TestKits would starve each other.
    [ModuleInitializer]
    internal static void Initialize()
    {
        ThreadPool.GetMinThreads(out var workers, out var io);
        ThreadPool.SetMinThreads(Math.Max(workers, 32), Math.Max(io, 32));
    }
}
