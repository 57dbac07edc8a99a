using ActorBlk.Actors.Serialization;
using Akka.Actor;

namespace ActorBlk.Actors;

/// <summary>
/// The data bytes held by I/O messages from the network on one node (one actor system), over
/// every device: a read's buffer or a write's data counts from the moment the request is accepted
/// until its reply is sent. A request that would take the total past
/// <c>actorblk.remote.max-inflight-io-bytes</c> is answered at once, before anything is allocated,
/// with <see cref="Hardware.Requests.BlockStatus.Resource"/> (<c>MessageIo.Submit</c>). Each
/// message is already held to one remoting frame; this bounds how many may be in flight, as
/// <c>NbdBufferBudget</c> does for the NBD server. Local callers never take from it.
/// </summary>
internal sealed class RemoteIoBudget : IExtension
{
    private readonly Lock _lock = new();
    private long _inUse;
    private long _refused;

    /// <param name="capacity">Bytes remote I/O in flight may hold together (more than 0).</param>
    public RemoteIoBudget(long capacity)
    {
        ArgumentOutOfRangeException.ThrowIfLessThan(capacity, 1);
        Capacity = capacity;
    }

    /// <summary>Bytes remote I/O in flight may hold together.</summary>
    public long Capacity { get; }

    /// <summary>Bytes held by remote I/O in flight now.</summary>
    public long InUse
    {
        get
        {
            lock (_lock)
            {
                return _inUse;
            }
        }
    }

    /// <summary>The budget of <paramref name="system"/> (created from its configuration on first use).</summary>
    public static RemoteIoBudget For(ActorSystem system)
    {
        ArgumentNullException.ThrowIfNull(system);
        return (RemoteIoBudget)system.RegisterExtension(Provider.Instance);
    }

    /// <summary>
    /// Takes <paramref name="bytes"/> when they fit, false (nothing taken) otherwise. Nothing in
    /// use always fits, so a budget smaller than one message still serves requests one at a time.
    /// </summary>
    public bool TryTake(long bytes)
    {
        lock (_lock)
        {
            if (_inUse != 0 && _inUse + bytes > Capacity)
            {
                return false;
            }

            _inUse += bytes;
            return true;
        }
    }

    /// <summary>Gives back <paramref name="bytes"/> taken with <see cref="TryTake"/>.</summary>
    public void Return(long bytes)
    {
        lock (_lock)
        {
            _inUse -= bytes;
        }
    }

    /// <summary>Requests refused so far because the budget was full.</summary>
    public long Refused => Interlocked.Read(ref _refused);

    /// <summary>Counts a refusal; returns how many there were so far (for a rate-limited warning).</summary>
    public long CountRefusal() => Interlocked.Increment(ref _refused);

    private sealed class Provider : ExtensionIdProvider<RemoteIoBudget>
    {
        public static readonly Provider Instance = new();

        public override RemoteIoBudget CreateExtension(ExtendedActorSystem system)
        {
            var budget = new RemoteIoBudget(RemoteSurface.MaxInflightIoBytes(system.Settings.Config));

            // Reported by node while its actor system runs (actorblk.remote.io_memory, io_refused).
            RemoteMetrics.Add(budget, system.Provider.DefaultAddress.ToString());
            _ = system.WhenTerminated.ContinueWith(_ => RemoteMetrics.Remove(budget), CancellationToken.None, TaskContinuationOptions.ExecuteSynchronously, TaskScheduler.Default);
            return budget;
        }
    }
}
