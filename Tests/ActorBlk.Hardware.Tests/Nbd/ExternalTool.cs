using System.Diagnostics;
using System.Text;

namespace ActorBlk.Hardware.Tests.Nbd;

/// <summary>Runs a real NBD client (nbdinfo, qemu-io, qemu-img, nbdcopy, fio) and collects its output.</summary>
public static class ExternalTool
{
    public static readonly TimeSpan Timeout = TimeSpan.FromMinutes(3);

    /// <summary>True when <paramref name="name"/> is on PATH (the tests need libnbd-bin, qemu-utils, fio, nbdkit: .ci/run installs them).</summary>
    public static bool Exists(string name) =>
        (Environment.GetEnvironmentVariable("PATH") ?? string.Empty).Split(':').Any(d => d.Length > 0 && File.Exists(Path.Combine(d, name)));

    /// <summary>Runs the tool to its end; throws with its output when it exits non-zero.</summary>
    public static async Task<string> RunAsync(string file, params string[] args)
    {
        var (code, output) = await RunUncheckedAsync(file, args);
        if (code != 0)
        {
            throw new InvalidOperationException($"{file} {string.Join(' ', args)} exited {code}:\n{output}");
        }

        return output;
    }

    public static async Task<(int ExitCode, string Output)> RunUncheckedAsync(string file, params string[] args)
    {
        var psi = new ProcessStartInfo(file) { RedirectStandardOutput = true, RedirectStandardError = true, UseShellExecute = false };
        foreach (var a in args)
        {
            psi.ArgumentList.Add(a);
        }

        using var process = Process.Start(psi) ?? throw new InvalidOperationException($"cannot start {file}");
        var output = new StringBuilder();
        var stdout = process.StandardOutput.ReadToEndAsync();
        var stderr = process.StandardError.ReadToEndAsync();
        try
        {
            await process.WaitForExitAsync().WaitAsync(Timeout);
        }
        catch (TimeoutException)
        {
            process.Kill(entireProcessTree: true);
            throw;
        }

        output.Append(await stdout).Append(await stderr);
        return (process.ExitCode, output.ToString());
    }
}
