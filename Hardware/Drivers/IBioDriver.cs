using ActorBlk.Hardware.Queues;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Hardware.Drivers;

/// <summary>
/// The driver of a bio-based queue (<c>-&gt;submit_bio</c>): it receives whole bios, with no tags,
/// software contexts or hardware queues between, and ends each exactly once with
/// <see cref="RequestQueue.EndBio"/>. Device-mapper's bio-based targets are the model.
/// </summary>
public interface IBioDriver : IDisposable
{
    /// <summary>The limits of the device the driver presents.</summary>
    QueueLimits Limits { get; }

    /// <summary>A short description for logs ("linear over sda, sdb").</summary>
    string Description { get; }

    /// <summary>
    /// The device the driver presents cannot be written (a linear or striped table over a
    /// read-only member): the queue refuses writes while this holds, and cannot be made writable.
    /// </summary>
    bool ReadOnly => false;

    /// <summary>
    /// Takes a bio of <paramref name="queue"/>. The bio holds a usage reference of the queue until
    /// the driver calls <see cref="RequestQueue.EndBio"/>; the call may come from any thread.
    /// </summary>
    void SubmitBio(RequestQueue queue, Bio bio);

    /// <summary>The queue is gone (after its drain): release what the driver holds for it.</summary>
    void Detach(RequestQueue queue);
}
