using System.Security.Cryptography;
using ActorBlk.Hardware.Devices;
using ActorBlk.Hardware.Requests;

namespace ActorBlk.Samples.BlockCopy;

/// <summary>What a copy did.</summary>
/// <param name="Bytes">Bytes copied (the source length, padded to whole blocks on the device).</param>
/// <param name="SourceHash">SHA-256 of the source.</param>
/// <param name="DeviceHash">SHA-256 of the same number of bytes read back from the device.</param>
/// <param name="Requests">Write requests submitted.</param>
public sealed record CopyResult(long Bytes, string SourceHash, string DeviceHash, int Requests)
{
    /// <summary>True when the device holds exactly the source's bytes.</summary>
    public bool Verified => SourceHash == DeviceHash;
}

/// <summary>
/// Copies a stream onto a block device in chunks, keeping up to <c>depth</c> writes in flight,
/// then flushes and reads everything back to verify it. The cancellation token stops the copy
/// between chunks (the writes in flight are awaited first).
/// </summary>
public sealed class BlockCopier(IBlockDevice device, int chunkSize = 64 * 1024, int depth = 8)
{
    public async Task<CopyResult> CopyAsync(Stream source, long deviceOffset = 0, CancellationToken cancellationToken = default)
    {
        var block = device.LogicalBlockSize;
        if (chunkSize % block != 0 || deviceOffset % block != 0)
        {
            throw new ArgumentException($"chunk size and offset must be multiples of the {block}-byte block size.");
        }

        using var sourceHash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var inflight = new Queue<ValueTask>();
        long copied = 0;
        var requests = 0;
        while (!cancellationToken.IsCancellationRequested)
        {
            var chunk = new byte[chunkSize];
            var n = await source.ReadAtLeastAsync(chunk, chunkSize, throwOnEndOfStream: false, cancellationToken);
            if (n == 0)
            {
                break;
            }

            sourceHash.AppendData(chunk, 0, n);
            var length = (n + block - 1) / block * block; // the last chunk is padded with zeroes to a whole block
            if (inflight.Count == depth)
            {
                await inflight.Dequeue();
            }

            inflight.Enqueue(device.WriteAsync(deviceOffset + copied, chunk.AsMemory(0, length)));
            copied += n;
            requests++;
        }

        while (inflight.Count > 0)
        {
            await inflight.Dequeue();
        }

        cancellationToken.ThrowIfCancellationRequested();
        await device.FlushAsync();
        return new CopyResult(copied, Convert.ToHexString(sourceHash.GetHashAndReset()), await HashDeviceAsync(deviceOffset, copied), requests);
    }

    private async Task<string> HashDeviceAsync(long offset, long length)
    {
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        var buffer = new byte[chunkSize];
        for (long done = 0; done < length; done += chunkSize)
        {
            var want = (int)Math.Min(chunkSize, length - done);
            var aligned = (want + device.LogicalBlockSize - 1) / device.LogicalBlockSize * device.LogicalBlockSize;
            var status = await device.ExecuteAsync(BlockOp.Read, offset + done, aligned, buffer.AsMemory(0, aligned));
            if (status != BlockStatus.Ok)
            {
                throw new IOException($"{device.Name}: reading back at {offset + done} failed: {status.Describe()}");
            }

            hash.AppendData(buffer, 0, want);
        }

        return Convert.ToHexString(hash.GetHashAndReset());
    }
}
