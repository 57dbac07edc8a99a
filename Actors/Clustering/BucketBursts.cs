namespace ActorBlk.Actors.Clustering;

/// <summary>
/// The pacing of a node's registry bucket writes (<see cref="DeviceRegistryActor"/>). A burst is a
/// run of writes each less than a window after the one before, of at most a budget of bytes in all
/// (<see cref="ClusterNodeDevices.WireEstimate"/>); the next burst starts only once a window passed
/// with no write, so every peer has had its delta turn between two bursts and no delta message
/// carries more than one. A burst still open takes what still fits in its budget: changes made back
/// to back (a device destroyed and at once created again under its name) replicate together. Paced
/// a window apart each, they showed every peer the device gone for a window in between, and a
/// remote handle that had already connected the new device was retired for it (its mirror leg
/// failed, and was copied whole, twice). A burst that leaves a bucket waiting takes nothing more.
/// </summary>
/// <param name="budget">The most bytes one burst writes (<see cref="Serialization.RemoteSurface.MaxRemoteData"/>); a bucket larger than that goes alone.</param>
internal sealed class BucketBursts(long budget)
{
    private long _windowEnd = long.MinValue;
    private long _used;

    /// <summary>
    /// The buckets of <paramref name="dirty"/> (in order) to write at <paramref name="now"/>
    /// (milliseconds), and when to look again if none: the time the open burst ends. The caller
    /// writes every bucket returned; <paramref name="window"/> is the least gap between two bursts
    /// (<see cref="DeviceRegistryActor.BurstWindow"/>).
    /// </summary>
    public (List<int> Burst, long RetryAt) Take(long now, IReadOnlyCollection<int> dirty, Func<int, ClusterNodeDevices> entry, TimeSpan window)
    {
        var open = now < _windowEnd;
        var burst = DeviceRegistryActor.NextBurst(dirty, entry, open ? budget - _used : budget, atLeastOne: !open, out var used);
        if (burst.Count > 0)
        {
            _used = (open ? _used : 0) + used;
            _windowEnd = now + (long)window.TotalMilliseconds;
        }

        if (burst.Count < dirty.Count)
        {
            // A bucket waits for the next burst: this one takes nothing more, so the next starts a
            // window after its last write. Left open, small changes joining it one after another
            // (each moving its end) held a larger bucket back for as long as they came (a review:
            // 31 joined writes, 9.6 s instead of 0.4).
            _used = budget;
        }

        return (burst, _windowEnd);
    }
}
