using ActorBlk.Hardware.Devices;

namespace ActorBlk.Testing;

/// <summary>
/// Concurrent writers whose last acknowledged version of every block is known: writer
/// <c>w</c> of <c>n</c> owns the blocks congruent to <c>w</c> mod <c>n</c>, so no two writers race
/// on a block, and a spec can read back exactly what was acknowledged.
/// </summary>
public static class VerifiedWriters
{
    /// <summary>
    /// Runs <paramref name="writers"/> writers of <paramref name="writesEach"/> random block writes
    /// each (writer <c>w</c> seeded with <c>w</c>); the data of version <c>v</c> of block <c>b</c>
    /// is <c>stamp(b, v)</c>, versions counting from 1.
    /// </summary>
    /// <returns>
    /// Per block, the last version whose write was acknowledged (0: never), and the number of
    /// writes that failed with a <see cref="BlockIoException"/>.
    /// </returns>
    public static async Task<(int[] Acknowledged, int Errors)> RunAsync(IBlockDevice device, int blockSize, int writers, int writesEach, Func<int, int, byte[]> stamp)
    {
        ArgumentNullException.ThrowIfNull(device);
        ArgumentNullException.ThrowIfNull(stamp);
        var blocks = (int)(device.Capacity / blockSize);
        var acknowledged = new int[blocks];
        var errors = 0;
        await Task.WhenAll(Enumerable.Range(0, writers).Select(w => Task.Run(async () =>
        {
            var random = new Random(w);
            for (var n = 1; n <= writesEach; n++)
            {
                var block = (random.Next(blocks / writers) * writers) + w;
                try
                {
                    await device.WriteAsync((long)block * blockSize, stamp(block, n));
                    acknowledged[block] = n;
                }
                catch (BlockIoException)
                {
                    Interlocked.Increment(ref errors);
                }
            }
        })));
        return (acknowledged, errors);
    }
}
