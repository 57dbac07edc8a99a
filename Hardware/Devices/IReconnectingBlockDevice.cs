namespace ActorBlk.Hardware.Devices;

/// <summary>
/// A device handle whose backing queue can be replaced under it: a remote device whose owner
/// node came back (a new incarnation) is reached through a new connection and queue, while the
/// handle stays the same. A stacked target uses it to take such a member back by itself (a
/// mirror re-adds the leg and resyncs what it missed).
/// </summary>
public interface IReconnectingBlockDevice : IBlockDevice
{
    /// <summary>Counts the replacements of the backing queue: 0 at open, one more per reconnection.</summary>
    int Incarnation { get; }

    /// <summary>
    /// Raised, on a thread of the runtime, after the backing queue was replaced by one that serves
    /// I/O (after <see cref="Incarnation"/> has grown). Handlers must not block.
    /// </summary>
    event EventHandler? Reconnected;
}
