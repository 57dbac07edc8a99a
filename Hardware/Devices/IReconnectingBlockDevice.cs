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
    /// True while the handle has no device behind it: it was opened for a device that had not
    /// appeared yet (a mirror started degraded without that leg). Meanwhile its geometry is
    /// unknown (<see cref="IBlockDevice.Capacity"/> is 0), its I/O fails <c>Offline</c>, and
    /// <see cref="IBlockDevice.Queue"/> throws <see cref="InvalidOperationException"/>; once the
    /// device appears and its queue connects, <see cref="Reconnected"/> is raised and this is false.
    /// </summary>
    bool IsMissing { get; }

    /// <summary>
    /// Raised, on a thread of the runtime, after the backing queue was replaced by one that serves
    /// I/O (after <see cref="Incarnation"/> has grown). Handlers must not block.
    /// </summary>
    event EventHandler? Reconnected;

    /// <summary>
    /// Raised, on a thread of the runtime, when the backing queue goes offline for good (its owner
    /// node was lost, or the device was removed or moved): I/O fails <c>Offline</c> until a
    /// <see cref="Reconnected"/>. Handlers must not block.
    /// </summary>
    event EventHandler? Disconnected;
}
