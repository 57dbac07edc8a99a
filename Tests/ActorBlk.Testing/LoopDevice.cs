using System.Diagnostics;

namespace ActorBlk.Testing;

/// <summary>
/// A Linux loop device over a file (<c>losetup --find --show</c>), detached on dispose: a real
/// block device for tests of the block-device paths (BLKGETSIZE64, BLKDISCARD, BLKZEROOUT,
/// exclusive open). Needs root and the loop driver.
/// </summary>
public sealed class LoopDevice : IDisposable
{
    private LoopDevice(string path) => Path = path;

    /// <summary>The device node, /dev/loopN.</summary>
    public string Path { get; }

    /// <summary>Attaches <paramref name="backingFile"/>; null with the reason when this machine cannot.</summary>
    public static LoopDevice? TryAttach(string backingFile, out string? reason)
    {
        if (!OperatingSystem.IsLinux() || Environment.UserName != "root" || !System.IO.File.Exists("/dev/loop-control"))
        {
            reason = "loop devices need Linux, root and /dev/loop-control";
            return null;
        }

        var (code, output) = Run("losetup", "--find", "--show", backingFile);
        if (code != 0 || !output.StartsWith("/dev/loop", StringComparison.Ordinal))
        {
            reason = $"losetup failed ({code}): {output}";
            return null;
        }

        reason = null;
        return new LoopDevice(output.Trim());
    }

    /// <inheritdoc />
    public void Dispose() => Run("losetup", "--detach", Path);

    private static (int Code, string Output) Run(string file, params string[] arguments)
    {
        try
        {
            var start = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true };
            foreach (var argument in arguments)
            {
                start.ArgumentList.Add(argument);
            }

            using var process = Process.Start(start)!;
            var output = process.StandardOutput.ReadToEnd() + process.StandardError.ReadToEnd();
            process.WaitForExit();
            return (process.ExitCode, output.Trim());
        }
        catch (System.ComponentModel.Win32Exception ex)
        {
            return (-1, ex.Message);
        }
    }
}
