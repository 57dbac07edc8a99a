namespace ActorBlk.Testing;

/// <summary>A directory of its own under the system temp directory, deleted with everything in it on dispose.</summary>
public sealed class TempDirectory : IDisposable
{
    /// <summary>Creates the directory.</summary>
    public TempDirectory(string prefix = "actorblk")
    {
        Path = System.IO.Path.Combine(System.IO.Path.GetTempPath(), $"{prefix}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(Path);
    }

    /// <summary>The directory.</summary>
    public string Path { get; }

    /// <summary>A path inside the directory.</summary>
    public string File(string name) => System.IO.Path.Combine(Path, name);

    /// <summary>Creates a file of <paramref name="length"/> bytes filled from <paramref name="seed"/> (0: zeroes).</summary>
    public string CreateFile(string name, long length, int seed = 0)
    {
        var path = File(name);
        using var stream = new FileStream(path, FileMode.CreateNew, FileAccess.Write);
        if (seed == 0)
        {
            stream.SetLength(length);
            return path;
        }

        var random = new Random(seed);
        var chunk = new byte[64 * 1024];
        for (long written = 0; written < length; written += chunk.Length)
        {
            random.NextBytes(chunk);
            stream.Write(chunk, 0, (int)Math.Min(chunk.Length, length - written));
        }

        return path;
    }

    /// <inheritdoc />
    public void Dispose()
    {
        try
        {
            Directory.Delete(Path, recursive: true);
        }
        catch (IOException)
        {
            // A file still open elsewhere: the temp directory is cleaned by the system eventually.
        }
    }
}
