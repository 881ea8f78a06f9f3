# A program with state only in memory: a counter that ticks every TICK seconds and
# writes its value to a file (write + rename, so the file is never half-written and
# is not held open). It never reads the file back: after a fresh start it counts from
# zero, so only a restore of its memory can make it continue.
path = ARGV.fetch(0)
tick = Float(ARGV.fetch(1, "0.05"))
n = 0
$stdout.sync = true
loop do
  n += 1
  tmp = "#{path}.tmp"
  File.write(tmp, "#{n}\n")
  File.rename(tmp, path)
  if n % 100 == 0
    begin
      puts "counter at #{n}"
    rescue Errno::EPIPE
      # our supervisor is restarting; its successor reopens the pipe
    end
  end
  sleep tick
end
